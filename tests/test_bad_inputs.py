"""The bad-input corpus: every input the README promises a one-line error for, through `r18lab.cli.main`.

Each case builds its bad input, runs the command (in-process; as a subprocess with a timeout where the input
could hang the process) and asserts: a non-zero exit, stderr exactly one line `error: <problem>; <fix>`, no
traceback; and, where something was already written, that it is still there and usable.

Image folders: a file a layout claims (an image name) that is not a readable regular file — a dangling
symlink, a FIFO, a socket — is refused with one line, never skipped, so a dataset never silently loses images.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import r18lab
from r18lab.cli import main
from r18lab.models import io as model_io
from r18lab.results import store as store_mod
from r18lab.results.store import RunStore

from helpers import tiny

ROOT = Path(__file__).resolve().parents[1]


# -- running a command and checking its error --------------------------------------------------------------
def run_main(argv: list[str], capsys) -> tuple[object, str]:
    """Exit code and stderr of main(argv) in this process; an escaping exception counts as a traceback."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    except BaseException:  # what a user would see as a traceback
        rc = "uncaught"
        print(traceback.format_exc(), file=sys.stderr)
    return rc, capsys.readouterr().err


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 120) -> tuple[object, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    try:
        p = subprocess.run([sys.executable, "-m", "r18lab.cli", *map(str, argv)], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`r18lab {' '.join(map(str, argv))}` hung (no answer in {timeout:.0f} s)")
    return p.returncode, p.stderr


def assert_one_line_error(rc: object, err: str, *words: str, fix: str | None = None) -> str:
    """Non-zero exit; stderr one non-empty `error: problem; fix` line mentioning `words`; no traceback.

    `fix`: for a line that names its fix without a `; ` (e.g. the valid range of a value), that part of it."""
    assert "Traceback" not in err, err
    assert rc not in (0, None), f"exit code {rc!r}; stderr: {err!r}"
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"stderr is {len(lines)} lines:\n{err}"
    line = lines[0]
    assert line.startswith("error: ") and line[len("error: "):].strip(), line
    if fix is None:
        assert ";" in line, f"no fix after the problem ('problem; fix'): {line}"
    else:
        assert fix.lower() in line.lower(), f"the fix {fix!r} is not in: {line}"
    for w in words:
        assert w.lower() in line.lower(), f"{w!r} not in: {line}"
    return line


# -- inputs ------------------------------------------------------------------------------------------------
def weights_file(path: Path, heads=("main",)) -> Path:
    """Weights of a tiny ResNet-18 for the `synthetic` source (10 classes, 16×16 RGB)."""
    spec = {"name": "resnet18", "num_classes": 10, "width": 0.0625, "heads": list(heads)}
    model = r18lab.create_model(**spec)
    model_io.save_model(model, path, spec, preprocessing=model_io.Preprocessing.identity((3, 16, 16)))
    return path


def bad_metadata(path: Path, text: str) -> Path:
    save_file({"conv1.weight": torch.zeros(1)}, str(path), metadata={model_io.MODEL_META_KEY: text})
    return path


def image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for i, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / cls / "a.png")
    return root


def interrupted_run(out: Path, monkeypatch, capsys, fail) -> list[str]:
    """Train 2 epochs into `out` while `fail` patches the writing of epoch 2's checkpoint; returns the argv."""
    argv = ["train", *tiny(), "--out", out]
    with monkeypatch.context() as m:
        fail(m)
        rc, err = run_main(argv, capsys)
    assert_one_line_error(rc, err)
    return argv


def fail_epoch2_save_file(m, error: OSError) -> None:
    real = model_io.save_file

    def save(tensors, filename, metadata=None):
        if "epoch0002" in str(filename):
            raise error
        return real(tensors, filename, metadata=metadata)

    m.setattr(model_io, "save_file", save)


def fail_epoch2_replace(m, error: OSError) -> None:
    real = os.replace

    def replace(src, dst, *a, **kw):
        if "epoch0002" in str(dst):
            raise error
        return real(src, dst, *a, **kw)

    m.setattr(os, "replace", replace)


def assert_epoch1_checkpoint_intact(out: Path) -> None:
    ckpt = out / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 1 and state["tag"] == "epoch0001"
    model_io.read_tensors(ckpt / "epoch0001.model.safetensors")
    model_io.read_tensors(ckpt / "epoch0001.state.safetensors")
    assert not [p.name for p in ckpt.iterdir() if p.name.endswith(".tmp") or "epoch0002" in p.name]


# -- the corpus --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fail, words", [
    pytest.param(lambda m: fail_epoch2_save_file(m, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
                 ("space",), id="checkpoint-disk-full"),
    pytest.param(lambda m: fail_epoch2_replace(m, PermissionError(errno.EACCES, os.strerror(errno.EACCES))),
                 ("permission",), id="checkpoint-permission-denied"),
])
def test_failed_checkpoint_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys,
                                                                                fail, words):
    out = tmp_path / "run"
    argv = ["train", *tiny(), "--out", out]
    with monkeypatch.context() as m:
        fail(m)
        rc, err = run_main(argv, capsys)
    assert_one_line_error(rc, err, "epoch0002", *words)
    assert_epoch1_checkpoint_intact(out)
    rc, err = run_main([*argv, "--resume"], capsys)  # nothing lost: the run continues from epoch 1
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 8


@pytest.mark.parametrize("corrupt, words", [
    pytest.param(lambda p: p.write_bytes(os.urandom(64)), ("checkpoint",), id="resume-garbage-state-file"),
    pytest.param(lambda p: save_file({k: torch.zeros(3) if k.startswith("optim.") else v
                                      for k, v in model_io.read_tensors(p)[0].items()}, str(p)),
                 ("optim",), id="resume-wrong-shape-optimizer-state"),
    pytest.param(lambda p: save_file({"x": torch.zeros(1)}, str(p)), ("checkpoint",), id="resume-empty-optimizer-state"),
])
def test_bad_optimizer_state_on_resume(tmp_path, monkeypatch, capsys, corrupt, words):
    out = tmp_path / "run"
    argv = interrupted_run(out, monkeypatch, capsys, lambda m: fail_epoch2_save_file(m, OSError(errno.ENOSPC, "full")))
    corrupt(out / "checkpoint" / "epoch0001.state.safetensors")
    rc, err = run_main([*argv, "--resume"], capsys)
    assert_one_line_error(rc, err, *words)


def test_corrupt_results_store(tmp_path, capsys):
    store = Path(os.environ["R18LAB_STORE"])
    store.parent.mkdir(parents=True)
    garbage = os.urandom(4096)
    store.write_bytes(garbage)
    assert_one_line_error(*run_main(["runs", "list"], capsys), "store", "corrupt")
    assert_one_line_error(*run_main(["train", *tiny(), "--out", tmp_path / "r"], capsys), "store", "corrupt")
    assert store.read_bytes() == garbage  # never overwritten: the user decides what to do with it


def test_read_only_results_store(tmp_path, monkeypatch, capsys):
    path = Path(os.environ["R18LAB_STORE"])
    RunStore(path).start("earlier", config={"a": 1}, out_dir=tmp_path)
    real = sqlite3.connect  # tests run as root, where chmod does not stop writes: open it read-only instead
    with monkeypatch.context() as m:
        m.setattr(store_mod.sqlite3, "connect", lambda p, **kw: real(f"file:{p}?mode=ro", uri=True, **kw))
        assert run_main(["runs", "list", "--json"], capsys)[0] == 0  # reading a read-only store works
        assert_one_line_error(*run_main(["train", *tiny(), "--out", tmp_path / "r"], capsys), "read-only", "--store")
    assert [r["run_id"] for r in RunStore(path).list()] == ["earlier"]


def test_dangling_symlink_in_image_folder(tmp_path, capsys):
    root = image_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "b.png").symlink_to(tmp_path / "gone.png")
    assert_one_line_error(*run_main(["data", "inspect", root], capsys), "b.png", "symlink")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_in_image_folder_is_refused_not_waited_on(tmp_path):
    root = image_folder(tmp_path / "imgs")
    os.mkfifo(root / "train" / "dog" / "b.png")
    os.mkfifo(root / "train" / "notes.txt")  # not claimed by any layout: never opened, no error
    rc, err = run_subprocess(["data", "inspect", root], tmp_path, timeout=120)
    assert_one_line_error(rc, err, "b.png", "FIFO")


def test_corrupt_image_in_folder(tmp_path, capsys):
    root = image_folder(tmp_path / "imgs")
    (root / "test" / "dog" / "b.png").write_bytes(b"\x89PNG not really")
    assert_one_line_error(*run_main(["data", "inspect", root, "--split", "test"], capsys), "b.png")


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"resnet18"'], ids=["not-json", "a-list", "a-string"])
def test_corrupt_weight_metadata(tmp_path, capsys, command, text):
    path = bad_metadata(tmp_path / "w.safetensors", text)
    argv = ([command, path, "synthetic"] if command == "eval"
            else [command, path, "--out", tmp_path / "out.safetensors"])
    assert_one_line_error(*run_main(argv, capsys), "metadata")
    assert not (tmp_path / "out.safetensors").exists()


def test_export_keep_nothing(tmp_path, capsys):
    w = weights_file(tmp_path / "w.safetensors")
    assert_one_line_error(*run_main(["export", w, "--keep", ",", "--out", tmp_path / "o.safetensors"], capsys),
                          "--keep")
    assert not (tmp_path / "o.safetensors").exists()


def test_export_unknown_head(tmp_path, capsys):
    w = weights_file(tmp_path / "w.safetensors")
    line = assert_one_line_error(*run_main(["export", w, "--keep", "main,bogus", "--out", tmp_path / "o.safetensors"],
                                           capsys), "bogus")
    assert "main" in line.split(";", 1)[1]  # the fix names the heads there are


def test_export_write_failure_keeps_the_earlier_file(tmp_path, monkeypatch, capsys):
    w = weights_file(tmp_path / "w.safetensors")
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"earlier export")

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with monkeypatch.context() as m:
        m.setattr(os, "replace", denied)
        assert_one_line_error(*run_main(["export", w, "--out", out, "--overwrite"], capsys), "permission")
    assert out.read_bytes() == b"earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors", "w.safetensors"]  # no temp file left


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_device_without_cuda(tmp_path, capsys):
    assert_one_line_error(*run_main(["train", *tiny("train.device=cuda"), "--out", tmp_path / "r"], capsys),
                          "cuda", "train.device")


@pytest.mark.parametrize("argv, words", [
    pytest.param(["train", *tiny("model.width=1000")], ("model.width", "fix=64"), id="width-1000"),
    pytest.param(["train", *tiny("model.width=.inf")], ("model.width", "fix=finite"), id="width-inf"),
    pytest.param(["train", *tiny("model.heads=[main, bogus]")], ("bogus",), id="unknown-head"),
    pytest.param(["train", *tiny("model.widht=1")], ("widht",), id="unknown-config-key"),
    pytest.param(["train", "no-such-config.yaml"], ("no-such-config.yaml",), id="config-file-missing"),
    pytest.param(["train", *tiny("train.epochs=-1")], ("train.epochs", "fix=equal to 1"), id="negative-epochs"),
    pytest.param(["eval", "no-such.safetensors", "synthetic"], ("no-such.safetensors",), id="eval-weights-missing"),
    pytest.param(["data", "inspect", "no-such-folder"], ("no-such-folder",), id="data-path-missing"),
    pytest.param(["data", "inspect", "synthetic", "--split", "bogus"], ("bogus",), id="data-unknown-split"),
    pytest.param(["runs", "show"], ("run id",), id="runs-show-without-id"),
    pytest.param(["runs", "show", "nope"], ("nope",), id="runs-show-unknown-id"),
    pytest.param(["runs", "list", "--status", "bogus"], ("bogus",), id="runs-unknown-status"),
    pytest.param(["bench", "--steps", "0"], ("--steps",), id="bench-zero-steps"),
])
def test_bad_arguments(tmp_path, capsys, argv, words):
    argv = [*argv, "--out", tmp_path / "r"] if argv[0] == "train" else argv
    fix = next((w[4:] for w in words if w.startswith("fix=")), None)
    assert_one_line_error(*run_main(argv, capsys), *(w for w in words if not w.startswith("fix=")), fix=fix)


def test_eval_batch_size_zero(tmp_path, capsys):
    w = weights_file(tmp_path / "w.safetensors")
    assert_one_line_error(*run_main(["eval", w, "synthetic", "--batch-size", "0"], capsys), "--batch-size")


def test_eval_garbage_weights(tmp_path, capsys):
    w = tmp_path / "w.safetensors"
    w.write_bytes(os.urandom(256))
    assert_one_line_error(*run_main(["eval", w, "synthetic"], capsys), "w.safetensors")


def test_store_is_a_folder(tmp_path, capsys):
    assert_one_line_error(*run_main(["runs", "list", "--store", tmp_path], capsys), "folder")


def test_protocol_negative_workers(tmp_path, monkeypatch, capsys):
    from r18lab.protocols import runner

    def no_run(*a, **k):
        raise AssertionError("a run started although --workers is -3")

    monkeypatch.setattr(runner, "_run_one", no_run)
    argv = ["protocol", "lowdata", ROOT / "recipes" / "lowdata_cifar10.yaml", "--scale", "tiny", "--workers", "-3",
            "--out", tmp_path / "p"]
    assert_one_line_error(*run_main(argv, capsys), "--workers", fix="at least 1")
