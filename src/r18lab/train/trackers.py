"""Experiment-tracker mirrors (`track=[tensorboard, mlflow]`): every metrics record and the run's config are copied
to the trackers named; metrics.jsonl and the SQLite store stay the source of truth. Each tracker is an optional
extra, imported only when a run names it; adding one is one decorated class here."""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, R18Error
from ..registry import Registry

TRACKERS: Registry = Registry("tracker")


class Tracker:
    """Opened on rank 0 at the start of training (`resume`: a resumed run, continued where the tracker allows);
    `log` gets every metrics record (numbers are mirrored)."""

    #: the importable module the tracker needs, the extra that installs it, and where its settings come from
    module = ""
    extra = ""
    settings = ""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool = False) -> None: ...
    def log(self, record: dict[str, Any], step: int) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The finite numeric values of a record (bools and strings left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flat(tree: Any, prefix: str = "") -> dict[str, str]:
    """A config tree as {dotted.key: text}; lists and None as their text."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: str(tree)}


def check(names: list[str]) -> None:
    """Every named tracker exists and its package is installed (one line naming the extra otherwise); nothing is
    imported."""
    for name in names:
        cls = TRACKERS.get(name)
        if importlib.util.find_spec(cls.module) is None:
            raise ConfigError(f"track=[{name}] needs the {cls.module} package, which is not installed; "
                              f"pip install 'r18lab[{cls.extra}]' or drop {name} from track")


class Mirrors:
    """The trackers of one run, fanned out to; empty (and free) when `track` is empty or on ranks other than 0."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any], resume: bool = False) -> None:
        check(names)
        self.trackers: list[Tracker] = []
        for name in names:
            try:
                self.trackers.append(TRACKERS.get(name)(run_dir, config, resume))
            except Exception as e:  # a tracker's own error (unreachable server, refused store): one line
                self.close("FAILED")
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise R18Error(f"track=[{name}] could not start: {first}; fix its settings "
                               f"({TRACKERS.get(name).settings}) or drop {name} from track") from None

    def log(self, record: dict[str, Any]) -> None:
        if self.trackers:
            step = int(record.get("step", record.get("epoch", 0)) or 0)
            for t in self.trackers:
                t.log(record, step)

    def close(self, status: str = "FINISHED") -> None:
        for t in self.trackers:
            t.close(status)
        self.trackers = []


@TRACKERS.register("tensorboard")
class TensorBoard(Tracker):
    """torch.utils.tensorboard's SummaryWriter into <run>/tensorboard: scalars per record, the config as text; a
    new (not resumed) run starts the folder afresh."""

    module, extra, settings = "tensorboard", "tensorboard", "the run folder must be writable"

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool = False) -> None:
        import json
        import shutil

        from torch.utils.tensorboard import SummaryWriter
        folder = Path(run_dir) / "tensorboard"
        if not resume:
            shutil.rmtree(folder, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, record: dict[str, Any], step: int) -> None:
        for k, v in numbers(record).items():
            if k not in ("step", "epoch"):
                self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


@TRACKERS.register("mlflow")
class MLflow(Tracker):
    """An MLflow run at the tracking URI of MLFLOW_TRACKING_URI (MLflow's own default, ./mlruns, when unset) in the
    experiment of MLFLOW_EXPERIMENT_NAME: the flattened config as params, each record's numbers as metrics. The run
    id is kept in <run>/mlflow_run.json, so a resumed run continues the same MLflow run."""

    module, extra, settings = "mlflow", "mlflow", "MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME"

    #: MLflow's limits: params per call, characters of a param value
    BATCH, VALUE_CHARS = 100, 500

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool = False) -> None:
        import json

        import mlflow
        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri:
            mlflow.set_tracking_uri(uri)
        saved = Path(run_dir) / "mlflow_run.json"
        earlier = json.loads(saved.read_text()) if resume and saved.is_file() else {}
        if earlier.get("tracking_uri") == uri and earlier.get("run_id"):
            self.run = mlflow.start_run(run_id=earlier["run_id"])
            return  # its params are there already
        self.run = mlflow.start_run(run_name=Path(run_dir).resolve().name)
        saved.write_text(json.dumps({"run_id": self.run.info.run_id, "tracking_uri": uri}))
        params = {k: v[: self.VALUE_CHARS] for k, v in flat(config).items()}
        items = list(params.items())
        for i in range(0, len(items), self.BATCH):
            mlflow.log_params(dict(items[i:i + self.BATCH]))

    def log(self, record: dict[str, Any], step: int) -> None:
        values = {k: v for k, v in numbers(record).items() if k not in ("step", "epoch")}
        if values:
            self.mlflow.log_metrics(values, step=step)

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
