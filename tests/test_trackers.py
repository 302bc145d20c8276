"""Tracker mirrors (`track=[tensorboard, mlflow]`): metrics and config arrive; a missing package is one line (exit 2);
nothing imports a tracker's package unless a run names it; and `train.compile` (torch.compile of the training
forward)."""
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import tiny
from r18lab.cli import main
from r18lab.config import load_config, run_identity

SRC = Path(__file__).resolve().parents[1] / "src"


def train(tmp_path, *extra):
    return main(["train", *tiny(*extra), "--out", str(tmp_path / "run")])


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_record(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert train(tmp_path, "track=[tensorboard]") == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    acc = [(e.step, e.value) for e in events.Scalars("eval/main/acc")]
    assert acc == [(r["step"], pytest.approx(r["eval/main/acc"])) for r in records(tmp_path / "run")]
    assert "train/loss" in events.Tags()["scalars"] and "config" in " ".join(events.Tags()["tensors"])


def test_mlflow_gets_params_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database; a folder suffices here
    assert train(tmp_path, "track=[mlflow]") == 0
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "run"
    assert runs[0].data.params["train.batch_size"] == "32" and runs[0].data.params["model.width"] == "0.0625"
    history = client.get_metric_history(runs[0].info.run_id, "eval/main/acc")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["eval/main/acc"]))
                                                    for r in records(tmp_path / "run")]


def test_mlflow_mirror_with_a_stand_in_module(tmp_path, monkeypatch):
    """Whether or not mlflow is installed: the calls the mirror makes, on a module standing in for it."""
    calls = []
    fake = types.ModuleType("mlflow")
    fake.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
    fake.set_tracking_uri = lambda uri: calls.append(("uri", uri))
    fake.start_run = lambda run_name: calls.append(("start", run_name)) or types.SimpleNamespace(
        info=types.SimpleNamespace(run_id="abc"))
    fake.log_params = lambda p: calls.append(("params", dict(p)))
    fake.log_metrics = lambda m, step: calls.append(("metrics", step, dict(m)))
    fake.end_run = lambda status: calls.append(("end", status))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert train(tmp_path, "track=[mlflow]") == 0
    assert calls[0] == ("uri", "http://tracking.example:5000") and calls[1] == ("start", "run")
    params = {k: v for c in calls if c[0] == "params" for k, v in c[1].items()}
    assert params["train.epochs"] == "2" and params["track"] == "['mlflow']"
    assert max(len(c[1]) for c in calls if c[0] == "params") <= 100  # MLflow's limit per call
    metrics = [c for c in calls if c[0] == "metrics"]
    assert [(s, m["eval/main/acc"]) for _, s, m in metrics] == [(r["step"], r["eval/main/acc"])
                                                               for r in records(tmp_path / "run")]
    assert calls[-1] == ("end", "FINISHED")


def test_a_resumed_run_continues_its_mirrors(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from r18lab.train import engine
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    args = ["train", *tiny("track=[tensorboard, mlflow]"), "--out", str(tmp_path / "run")]
    shown = engine.Progress.epoch

    def stop(self, epoch, *a, **k):  # after epoch 1's checkpoint
        shown(self, epoch, *a, **k)
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(engine.Progress, "epoch", stop)
        assert main(args) == 130
    assert main([*args[:1], "--resume", *args[1:]]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run, continued
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "eval/main/acc")] == [4, 8]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/main/acc")] == [4, 8]


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_missing_package_is_one_line_exit_2(tmp_path, monkeypatch, capsys, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == name else real(mod, *a))
    assert train(tmp_path, f"track=[{name}]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install 'r18lab[{name}]'" in err[0], err
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_unknown_tracker_is_one_line_exit_2(tmp_path, capsys):
    assert train(tmp_path, "track=[wandb]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'wandb'" in err[0] and "mlflow, tensorboard" in err[0], err


def test_a_tracker_failing_to_start_is_one_line(tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("mlflow")
    fake.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)

    def refuse(run_name):
        raise ConnectionError("server at http://nowhere:5000 unreachable\nmore detail")
    fake.start_run = refuse
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    assert train(tmp_path, "track=[mlflow]") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and "MLFLOW_TRACKING_URI" in err[0], err


def test_nothing_imports_a_tracker_unless_a_run_names_it():
    code = ("import sys, r18lab.cli, r18lab.api, r18lab.train.engine, r18lab.train.trackers, r18lab.train.run; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard') "
            "or m.startswith('torch.utils.tensorboard')]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_track_and_compile_leave_the_run_identity_alone():
    plain = run_identity(load_config(None, tiny()))
    assert run_identity(load_config(None, tiny("track=[tensorboard, mlflow]", "train.compile=true"))) == plain


def test_compile_wraps_the_training_forward_only(tmp_path, monkeypatch):
    import torch
    compiled = []

    def fake_compile(module):
        compiled.append(module)

        class Counted(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self._orig_mod, self.calls = module, 0

            def forward(self, x):
                self.calls += 1
                return self._orig_mod(x)
        compiled.append(Counted())
        return compiled[-1]
    monkeypatch.setattr(torch, "compile", fake_compile)
    assert train(tmp_path, "train.compile=true") == 0
    assert len(compiled) == 2 and compiled[1].calls == 8  # 2 epochs × 4 steps through the compiled module
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert not any("_orig_mod" in k or k.startswith("module.") for k in weights)  # the plain model's names
