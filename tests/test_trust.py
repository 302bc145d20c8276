"""Results a user can trust: preprocessing travels with the weights, resume refuses a changed config, nothing
finished is destroyed, run identity, divergence caught where it happens, metrics one record per epoch after a
kill, no leaked process-global state, hooks' events and tensor state, training on an index list."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

from r18lab.cli import main
from r18lab.config import EXECUTION_ONLY, load_config, result_config, run_identity
from r18lab.errors import ConfigError, TrainingDiverged
from r18lab.models.io import IDENTITY_META_KEY, load_checkpoint, read_metadata
from r18lab.registry import HOOKS
from r18lab.results.metrics import read_metrics
from r18lab.train import checkpoint as ckpt
from r18lab.train.engine import Trainer, train
from r18lab.train.hooks import Hook
from r18lab.train.run import execute, open_store

from helpers import tiny


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` (but the lock) with its bytes and mtime, to prove nothing was touched
    (the report's plots are redrawn, byte-identical, when the CLI prints a run's report)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), 0 if p.suffix == ".png" else p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# -- 1. preprocessing travels with the weights ------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["none", "dataset"])
def test_eval_uses_the_stored_preprocessing_and_reproduces_training_accuracy(tmp_path, capsys, normalize):
    """The reported case: a run trained with data.normalize=none scored 42.2 % (FR head) in training and
    25.0 % under `r18lab eval`, which recomputed normalisation from the data. Both heads must match exactly."""
    out = tmp_path / "run"
    assert main(["train", *tiny("model.heads=[main, fr]", f"data.normalize={normalize}"), "--out", str(out)]) == 0
    final = json.loads((out / "summary.json").read_text())["final"]
    loaded = load_checkpoint(out / "model.safetensors")
    pre = loaded.preprocessing
    assert pre.input_size == (3, 8, 8) and pre.channel_order == "RGB" and len(pre.classes) == 4
    if normalize == "none":
        assert pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0)
    else:
        assert pre.mean != (0.0, 0.0, 0.0)
    capsys.readouterr()
    assert main(["eval", str(out / "model.safetensors"), "synthetic", "num_classes=4", "image_size=8", "n=128",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for head in ("main", "fr"):
        assert res[f"eval/{head}/acc"] == pytest.approx(final[f"eval/{head}/acc"], abs=1e-9)
        assert res[f"eval/{head}/loss"] == pytest.approx(final[f"eval/{head}/loss"], rel=1e-5)
    if normalize == "none":  # the old behaviour (statistics of the eval data) is a different model input
        assert main(["eval", str(out / "model.safetensors"), "synthetic", "num_classes=4", "image_size=8", "n=128",
                     "--json", "--normalize", "dataset"]) == 0
        old = json.loads(capsys.readouterr().out)
        assert old["eval/main/loss"] != pytest.approx(final["eval/main/loss"], rel=1e-3)


def test_export_keeps_preprocessing_and_identity(tmp_path, capsys):
    out = tmp_path / "run"
    train(load_config(None, tiny("model.heads=[main, fr]", "data.normalize=none")), out)
    assert main(["export", str(out / "model.safetensors"), "--keep", "main", "--out", str(tmp_path / "p.safetensors")]) == 0
    a, b = load_checkpoint(out / "model.safetensors"), load_checkpoint(tmp_path / "p.safetensors")
    assert a.preprocessing == b.preprocessing and a.identity == b.identity is not None


def test_eval_of_weights_without_preprocessing_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    train(load_config(None, tiny()), out)
    tensors, meta = ckpt.read_tensors(out / "model.safetensors")
    legacy = {k: v for k, v in meta.items() if k == ckpt.MODEL_META_KEY}
    ckpt.atomic_save_tensors(tensors, tmp_path / "old.safetensors", legacy)
    assert main(["eval", str(tmp_path / "old.safetensors"), "synthetic", "num_classes=4", "image_size=8"]) != 0
    assert "--normalize dataset" in one_error_line(capsys.readouterr().err)


# -- 2 + 3. resume refuses a changed config; nothing finished is destroyed ---------------------------------
@pytest.mark.parametrize("change", ["train.epochs=3", "optim.lr=0.01", "data.labels=64"])
def test_resume_with_a_changed_config_is_refused_before_anything_is_touched(tmp_path, capsys, change):
    out = tmp_path / "run"
    assert main(["train", *tiny(), "--out", str(out)]) == 0
    store = open_store()
    run_id = str(out.resolve())
    assert store.get(run_id)["status"] == "done"
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", *tiny(change), "--out", str(out), "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert change.split("=")[0] in line and "--resume" in line
    assert snapshot(out) == before  # config.json, splits.json, metrics, weights, summary: all untouched
    assert store.get(run_id)["status"] == "done" and store.get(run_id)["metrics"]


def test_plain_train_into_a_finished_run_is_refused_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *tiny(), "--out", str(out)]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", *tiny("seed=1"), "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "finished run" in line and "--overwrite" in line
    assert snapshot(out) == before
    assert main(["train", *tiny("seed=1"), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1


def test_plain_train_into_an_interrupted_run_points_to_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupt_checkpoint(monkeypatch, at_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, tiny("train.epochs=3")), out)
    monkeypatch.undo()
    with pytest.raises(Exception, match=r"unfinished run \(epoch 1 checkpointed\).*--resume"):
        train(load_config(None, tiny("train.epochs=3")), out)


def test_resume_of_a_finished_run_with_execution_only_changes_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *tiny(), "--out", str(out)]) == 0
    before = snapshot(out)
    assert main(["train", *tiny("train.progress=lines", "train.threads=1"), "--out", str(out), "--resume"]) == 0
    assert snapshot(out) == before


def test_a_second_process_cannot_train_into_a_locked_folder(tmp_path):
    out = tmp_path / "run"
    first = Trainer(load_config(None, tiny()), out)
    first.claim()
    try:
        with pytest.raises(Exception, match="being trained by pid"):
            Trainer(load_config(None, tiny()), out).claim()
    finally:
        first.release()
    train(load_config(None, tiny()), out)  # released: usable again


# -- 4. run identity --------------------------------------------------------------------------------------
def test_identity_ignores_execution_only_keys_and_defaults():
    base = load_config(None, tiny())
    same = load_config(None, tiny("train.progress=lines", "train.threads=2", "train.device=cpu",
                                  "train.eval_batch_size=7"))
    assert run_identity(base) == run_identity(same)
    assert run_identity(base) != run_identity(load_config(None, tiny("optim.lr=0.01")))
    assert run_identity(base) != run_identity(load_config(None, tiny("seed=1")))
    assert set(EXECUTION_ONLY) == {"train.progress", "train.threads", "train.device", "train.eval_batch_size",
                                   "train.compile", "track"}
    assert result_config(load_config(None, [])) == {}  # only values that differ from the defaults


def test_identity_of_a_student_follows_its_teachers_identity_not_its_path(tmp_path):
    train(load_config(None, tiny()), tmp_path / "t1")
    teacher_id = read_metadata(tmp_path / "t1" / "model.safetensors")[IDENTITY_META_KEY]
    (tmp_path / "t1").rename(tmp_path / "moved")
    a = load_config(None, tiny(f"teacher={tmp_path / 'moved' / 'model.safetensors'}", "objective=[ce, kd]"))
    b = load_config(None, tiny("teacher=/elsewhere/model.safetensors", "objective=[ce, kd]"))
    assert a.objective[1]["teacher"].endswith("moved/model.safetensors")  # the legacy key became a kd parameter
    ida = run_identity(a, {str(tmp_path / "moved" / "model.safetensors"): teacher_id})
    idb = run_identity(b, {"/elsewhere/model.safetensors": teacher_id})
    assert ida == idb
    assert ida != run_identity(b, {"/elsewhere/model.safetensors": "another-teacher"})
    summary = train(a, tmp_path / "student")
    assert summary["identity"] == ida


# -- 5. divergence ----------------------------------------------------------------------------------------
class _NanLossAt:
    def __init__(self, ctx, step: int = 1) -> None:
        self.step, self.calls = step, 0

    def __call__(self, out, batch):
        self.calls += 1
        return {"nan": out.logits["main"].sum() * (math.nan if self.calls == self.step else 0.0)}


from r18lab.objectives.base import Objective  # noqa: E402
from r18lab.registry import OBJECTIVES  # noqa: E402

OBJECTIVES.register("test_trust_nan")(type("_TrustNan", (Objective,), dict(_NanLossAt.__dict__)))


class _PoisonWeights(Hook):
    """Sets one weight to NaN after step `at` (the loss stays finite on that step)."""

    def __init__(self, at: int = 1) -> None:
        self.at = at

    def after_step(self, ctx, step):
        if step == self.at:
            with torch.no_grad():
                ctx.model.fc.weight[0, 0] = float("nan")


HOOKS.register("test_poison")(_PoisonWeights)


def test_divergence_on_the_last_step_never_ends_done(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, tiny("train.epochs=2", "objective=[ce, {name: test_trust_nan, step: 8}]"))
    with pytest.raises(TrainingDiverged, match=r"at step 8 \(epoch 2\); the last good checkpoint is .*epoch0001"):
        execute(cfg, out, store=open_store())
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert not (out / "model.safetensors").exists()
    assert open_store().get(str(out.resolve()))["status"] == "diverged"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == 1


def test_divergence_before_any_checkpoint_names_none(tmp_path):
    cfg = load_config(None, tiny("objective=[ce, {name: test_trust_nan, step: 2}]"))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint" / "state.json").exists()


def test_non_finite_weights_with_a_finite_loss_are_caught(tmp_path):
    with pytest.raises(TrainingDiverged, match="weights became NaN or infinite during epoch 2"):
        train(load_config(None, tiny("train.epochs=2", "hooks=[{name: test_poison, at: 8}]")), tmp_path / "run")


def test_training_steps_do_not_sync_with_the_host(tmp_path, monkeypatch):
    """No .item(), bool() or float() of a tensor inside a training step (they would block on a GPU)."""
    calls = []
    original = Trainer._train_step
    inside = {"on": False}
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        fn = getattr(torch.Tensor, name)

        def spy(self, *a, _fn=fn, _name=name, **k):
            if inside["on"]:
                calls.append(_name)
            return _fn(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)

    def step(self, x, y, s):
        inside["on"] = True
        try:
            return original(self, x, y, s)
        finally:
            inside["on"] = False
    monkeypatch.setattr(Trainer, "_train_step", step)
    train(load_config(None, tiny("model.heads=[main, fr]")), tmp_path / "run")
    assert calls == []


# -- 6. metrics survive a crash without duplicates ----------------------------------------------------------
def _interrupt_checkpoint(monkeypatch, at_epoch: int) -> None:
    """Kill (KeyboardInterrupt) after epoch `at_epoch`'s metrics record is written, before its checkpoint."""
    original = ckpt.save_training_state

    def save(folder, *, epoch, **kw):
        if epoch == at_epoch:
            raise KeyboardInterrupt
        return original(folder, epoch=epoch, **kw)
    monkeypatch.setattr(ckpt, "save_training_state", save)


def _interrupt_metrics_write(monkeypatch, at_epoch: int) -> None:
    """Kill in the middle of writing epoch `at_epoch`'s record: half a line reaches the file."""
    from r18lab.results.metrics import MetricsWriter
    original = MetricsWriter.write

    def write(self, record):
        if record.get("epoch") == at_epoch and "train/loss" in record:
            line = json.dumps(record).encode()
            self._fh.write(line[: len(line) // 2])
            self._fh.flush()
            raise KeyboardInterrupt
        return original(self, record)
    monkeypatch.setattr(MetricsWriter, "write", write)


@pytest.mark.parametrize("kill", [_interrupt_checkpoint, _interrupt_metrics_write])
def test_kill_around_the_metrics_write_resumes_with_one_record_per_epoch(tmp_path, monkeypatch, kill):
    args = tiny("train.epochs=3", "train.deterministic=true", "hooks=[tempbalance]", "model.width=0.25")
    full = tmp_path / "full"
    train(load_config(None, args), full)
    cut = tmp_path / "cut"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        kill(m, at_epoch=2)
        train(load_config(None, args), cut)
    (cut / ".model.safetensors.stale.tmp").write_bytes(b"partial")  # a killed atomic write's leftover
    (cut / "checkpoint" / ".state.json.x.tmp").write_bytes(b"partial")
    train(load_config(None, args), cut, resume=True)
    epochs = [r["epoch"] for r in read_metrics(cut / "metrics.jsonl") if "train/loss" in r]
    assert epochs == [1, 2, 3]
    assert [r["epoch"] for r in read_metrics(cut / "metrics.jsonl")] == \
        [r["epoch"] for r in read_metrics(full / "metrics.jsonl")]  # the hook's fit-start record too, once
    assert not list(cut.glob(".*.tmp")) and not list((cut / "checkpoint").glob(".*.tmp"))
    a, b = ckpt.read_tensors(full / "model.safetensors")[0], ckpt.read_tensors(cut / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- 13. hooks: events between backward and step, tensor state in checkpoints --------------------------------
class _FreezeFc(Hook):
    """Zeroes the gradient of `fc` between backward and the optimizer step; keeps a tensor step counter."""

    def __init__(self) -> None:
        self.count = torch.zeros(())
        self.masks = {"fc": torch.ones(2, 2)}

    def before_step(self, ctx, step):
        ctx.model.fc.weight.grad.zero_()
        ctx.model.fc.bias.grad.zero_()
        self.count += 1

    def state_dict(self):
        return {"count": self.count, "nested": {"masks": self.masks}, "label": "x"}

    def load_state_dict(self, state):
        assert torch.is_tensor(state["count"]) and torch.is_tensor(state["nested"]["masks"]["fc"])
        self.count = state["count"].clone()


HOOKS.register("test_freeze_fc")(_FreezeFc)


def test_before_step_hook_edits_gradients_and_its_tensor_state_is_checkpointed(tmp_path, monkeypatch):
    args = tiny("train.epochs=3", "optim.weight_decay=0", "hooks=[test_freeze_fc]")
    out = tmp_path / "run"
    torch.manual_seed(0)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _interrupt_checkpoint(m, at_epoch=3)
        train(load_config(None, args), out)
    trainer = Trainer(load_config(None, args), out)
    trainer.fit(resume=True)
    assert float(trainer.hooks[0].count) == 12  # 4 steps × 3 epochs: restored at 8 from the checkpoint, +4
    fresh = Trainer(load_config(None, args), tmp_path / "fresh")
    fresh.fit()
    from r18lab.models import create_model
    torch.manual_seed(0)
    init = create_model("resnet18", num_classes=4, width=0.0625)
    assert torch.equal(fresh.model.fc.weight, init.fc.weight)  # never updated: its gradient was zeroed
    assert not torch.equal(fresh.model.conv1.weight, init.conv1.weight)


# -- 16. training on an explicit index list -------------------------------------------------------------------
def test_training_on_an_index_file(tmp_path):
    idx = [3, 10, 11, 40, 77, 100]
    (tmp_path / "pool.json").write_text(json.dumps(idx))
    summary = train(load_config(None, tiny(f"data.indices={tmp_path / 'pool.json'}")), tmp_path / "run")
    assert summary["num_train"] == 6
    assert json.loads((tmp_path / "run" / "splits.json").read_text())["train"] == idx
    with pytest.raises(ConfigError, match="set only one"):
        train(load_config(None, tiny(f"data.indices={tmp_path / 'pool.json'}", "data.labels=8")), tmp_path / "r2")


# -- 18. no process-global state leaks between runs ------------------------------------------------------------
def test_threads_and_determinism_are_restored_after_a_run(tmp_path):
    torch.set_num_threads(1)
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    train(load_config(None, tiny("train.threads=2", "train.deterministic=true")), tmp_path / "run")
    after = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    assert after == before


# -- 6. store rows of killed runs do not stay `running` ------------------------------------------------------
def test_rows_of_killed_or_interrupted_runs_show_as_interrupted_and_a_rerun_takes_them_over(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys
    store = open_store()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.start("killed", config={}, out_dir=tmp_path / "k")
    with store._write() as conn:  # the row a `kill -9`ed trainer leaves: running, its pid gone
        conn.execute("UPDATE runs SET pid = ? WHERE run_id = 'killed'", (dead.pid,))
    store.start("alive", config={}, out_dir=tmp_path / "a")  # this process: still running
    assert store.get("killed")["status"] == "interrupted" and store.get("alive")["status"] == "running"
    assert [r["run_id"] for r in store.list(status="interrupted")] == ["killed"]
    out = tmp_path / "run"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _interrupt_checkpoint(m, at_epoch=2)
        execute(load_config(None, tiny("train.epochs=2")), out, store=store)
    row = store.get(str(out.resolve()))
    assert row["status"] == "interrupted"
    assert main(["runs", "list"]) == 0
    assert any(ln.startswith("interrupted") and ln.endswith(str(out.resolve()))
               for ln in capsys.readouterr().out.splitlines())
    execute(load_config(None, tiny("train.epochs=2")), out, resume=True, store=store)
    assert store.get(str(out.resolve()))["status"] == "done"


def test_export_keeps_head_entry_options_and_never_overwrites_silently(tmp_path, capsys):
    out = tmp_path / "run"
    train(load_config(None, tiny("model.heads=[main, {name: fr, dim: 16, depth: 0}]")), out)
    target = tmp_path / "fr.safetensors"
    assert main(["export", str(out / "model.safetensors"), "--keep", "main,fr", "--out", str(target)]) == 0
    loaded = load_checkpoint(target)  # rebuilds: the kept entry's options (dim 16, depth 0) travelled along
    assert loaded.spec["heads"] == ["main", {"name": "fr", "dim": 16, "depth": 0}]
    before = target.read_bytes()
    capsys.readouterr()
    assert main(["export", str(out / "model.safetensors"), "--keep", "main", "--out", str(target)]) == 1
    assert "--overwrite" in one_error_line(capsys.readouterr().err) and target.read_bytes() == before


KILL_SCRIPT = r"""
import json, os, signal, sys
from r18lab.results.metrics import MetricsWriter
from r18lab.train import checkpoint as ckpt
point, out, *args = sys.argv[1:]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "metrics-write":  # half of epoch 2's record reaches the file, then kill -9
    original = MetricsWriter.write
    def write(self, rec):
        if rec.get("epoch") == 2 and "train/loss" in rec:
            line = json.dumps(rec).encode()
            self._fh.write(line[: len(line) // 2]); self._fh.flush(); die()
        return original(self, rec)
    MetricsWriter.write = write
else:  # "before-commit": epoch 2's record and weights are written, state.json (the commit) is not
    original = ckpt.atomic_write_text
    def write_text(path, text):
        if path.name == "state.json" and json.loads(text)["epoch"] == 2:
            die()
        return original(path, text)
    ckpt.atomic_write_text = write_text
from r18lab.cli import main
main(["train", *args, "--out", out])
"""


@pytest.mark.parametrize("point", ["metrics-write", "before-commit"])
def test_kill_9_during_the_metrics_write_or_before_the_commit(tmp_path, point, capsys):
    """A real SIGKILL (no Python clean-up): resume gives one record per epoch and bit-identical weights."""
    import subprocess
    import sys
    args = tiny("train.epochs=3", "train.deterministic=true")
    assert main(["train", *args, "--out", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, point, str(cut), *args], env=env, timeout=300)
    assert proc.returncode == -9
    assert open_store().get(str(cut.resolve()))["status"] == "interrupted"
    assert main(["train", *args, "--out", str(cut), "--resume"]) == 0
    assert [r["epoch"] for r in read_metrics(cut / "metrics.jsonl")] == [1, 2, 3]
    assert not list(cut.rglob(".*.tmp"))
    a, b = ckpt.read_tensors(tmp_path / "full" / "model.safetensors")[0], ckpt.read_tensors(cut / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert open_store().get(str(cut.resolve()))["status"] == "done"


# -- 10. model I/O lives in models/: analysis and prediction do not import the engine -------------------------
def test_analysis_and_predict_do_not_import_the_training_engine():
    import subprocess
    import sys
    code = ("import sys, r18lab.analysis.commands, r18lab.predict, r18lab.models.io; "
            "sys.exit(int('r18lab.train.engine' in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_a_start_that_failed_before_training_can_simply_be_tried_again(tmp_path, capsys):
    """A bad teacher is found after config.json/splits.json are written: re-running with a fixed config into the
    same folder needs no --overwrite (nothing trained was there); a folder with results still refuses."""
    teacher = tmp_path / "teacher"
    assert main(["train", *tiny("data.options={num_classes: 3, image_size: 8, n: 64}"), "--out", str(teacher)]) == 0
    out = tmp_path / "student"
    bad = f"objective=[ce, {{name: kd, teacher: {teacher / 'model.safetensors'}}}]"
    assert main(["train", *tiny(bad), "--out", str(out)]) == 2
    assert (out / "config.json").exists() and not (out / "metrics.jsonl").exists()
    capsys.readouterr()
    assert main(["train", *tiny(), "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["train", *tiny(), "--out", str(out)]) == 1  # now it holds a finished run
    assert "holds a finished run" in capsys.readouterr().err
