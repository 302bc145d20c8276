"""Corruption-robustness columns for the low-data protocol (paper 000, appendix C, Figures 13–14): every finished
run's eval head on the same seeded subset of test images under the CIFAR-10-C corruptions × severities.

Each run's result is written once, atomically, beside its weights (`robustness-<settings key>.json`), so a rerun
or `r18lab report DIR` evaluates only the runs that lack it. Rows gain `c_mean` (mean over every corrupted cell)
and `c_s1` … `c_s5` (mean over corruptions at each severity) for the tables and paired tests.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

from pydantic import Field, field_validator

from ..config import Strict, build_config
from ..train.checkpoint import atomic_write_text
from .spec import RunSpec


class RobustnessSettings(Strict):
    #: `all` (every corruption that can be generated: 14 of 15, frost needs its photographs) or a list of names
    corruptions: Union[Literal["all"], list[str]] = "all"
    #: severities, each 1–5
    severities: list[int] = [1, 2, 3, 4, 5]
    #: a seeded random subset of the test split this large (the same images for every run); null = all of it
    test_images: Optional[int] = Field(2000, ge=1)
    #: seeds the subset and the corruptions' noise
    seed: int = 0
    #: the methods evaluated (each run is 1 + corruptions × severities test passes); null = every method
    methods: Optional[list[str]] = None

    @field_validator("corruptions")
    @classmethod
    def _known(cls, v: Any) -> Any:
        from ..data.corruptions import resolve
        from ..errors import ConfigError
        try:
            resolve("all" if v == "all" else ",".join(v))
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("severities")
    @classmethod
    def _severities(cls, v: list[int]) -> list[int]:
        if not v or any(s not in (1, 2, 3, 4, 5) for s in v) or len(set(v)) != len(v):
            raise ValueError(f"severities must be distinct integers in 1–5, got {v}")
        return sorted(v)

    def names(self) -> list[str]:
        from ..data.corruptions import resolve
        return resolve("all" if self.corruptions == "all" else ",".join(self.corruptions))

    def key(self) -> str:
        """12 hex of the settings that change the numbers (names resolved, so `all` and its list agree)."""
        blob = json.dumps({"names": self.names(), "severities": self.severities, "n": self.test_images,
                           "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def evaluated_subset(n_test: int, settings: RobustnessSettings) -> "list[int] | None":
    """Indices of the test images evaluated: a permutation seeded by `settings.seed`, first `test_images`, sorted;
    None = all."""
    import numpy as np
    if settings.test_images is None or settings.test_images >= n_test:
        return None
    rng = np.random.default_rng(settings.seed)
    return sorted(int(i) for i in rng.permutation(n_test)[:settings.test_images])


def result_path(spec: RunSpec, settings: RobustnessSettings) -> Path:
    return spec.out_dir / f"robustness-{settings.key()}.json"


def read_result(spec: RunSpec, settings: RobustnessSettings) -> dict[str, Any] | None:
    try:
        return json.loads(result_path(spec, settings).read_text())
    except (OSError, ValueError):
        return None


def evaluate_runs(specs: list[RunSpec], settings: RobustnessSettings, log: Callable[[str], Any] = print,
                  device: str = "auto") -> int:
    """Evaluate every finished run in `specs` that has no result for these settings; returns how many were
    evaluated. The test images come from the first run's data config (a protocol's runs share their data)."""
    import torch

    from ..analysis.robustness import dataset_key, evaluate_corruptions
    from ..data.loader import to_device_tensors
    from ..data.tasks import apply_task
    from ..data.training import load_data
    from ..models.io import load_checkpoint, require_preprocessing
    from ..train.environment import pick_device
    from .spec import read_summary

    todo = [s for s in specs if (read_summary(s) or {}).get("status") == "done" and read_result(s, settings) is None]
    if not todo:
        return 0
    names = settings.names()
    dev = pick_device(device)
    d = build_config(todo[0].config).data
    train, test = load_data(d)
    task = apply_task(d.task, train, test)
    x, y = to_device_tensors(task.test, dev)
    if task.test_points is not None:  # a task that fixes its test points
        index = torch.as_tensor(task.test_points, device=x.device)
        x, y = x[index], y[index]
    rows = evaluated_subset(len(y), settings)
    if rows is not None:
        index = torch.tensor(rows, device=x.device)
        x, y = x[index], y[index]
    key = dataset_key(f"{Path(str(d.source)).name}-{d.test_split}", x)
    log(f"robustness: {len(todo)} run(s) × {len(names)} corruptions × {len(settings.severities)} severities on "
        f"{len(y)} test images")
    for i, spec in enumerate(todo):
        loaded = load_checkpoint(spec.out_dir / "model.safetensors", dev)
        pre = require_preprocessing(loaded)
        table, _ = evaluate_corruptions({"run": (loaded.model, pre.normalizer().to(dev))}, x, y, names,
                                        settings.severities, settings.seed, key)
        series = table["series"]
        head = spec.eval_head
        one = series.get(f"run/{head}") or (series.get("run") if len(series) == 1 else None)
        if one is None:
            raise KeyError(f"{spec.run_id}: no head {head!r} among {sorted(series)}")
        result = {"run_id": spec.run_id, "head": head, "corruptions": names, "severities": settings.severities,
                  "test_images": int(len(y)), "seed": settings.seed, **one}
        atomic_write_text(result_path(spec, settings), json.dumps(result, indent=1) + "\n")
        log(f"robustness [{i + 1}/{len(todo)}] {spec.run_id}: clean {one['clean']:.2f}, corrupted mean "
            f"{one['mean']:.2f}")
    return len(todo)


def columns(result: dict[str, Any]) -> dict[str, float]:
    """Row fields of one result: c_clean (the subset, uncorrupted), c_mean, c_s<k> per severity."""
    return {"c_clean": result["clean"], "c_mean": result["mean"],
            **{f"c_s{k}": v for k, v in result["mean_per_severity"].items()}}
