"""End-to-end runs of the `r18lab` command line, and its one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import r18lab
from r18lab.cli import main
from r18lab.train.checkpoint import load_weights

from helpers import tiny

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "r18lab.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_export_eval_roundtrip_with_fr_head(tmp_path, capsys):
    out = tmp_path / "fr"
    assert main(["train", *tiny("model.heads=[main, fr]", "model.options={fr_dim: 16}"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| main |" in printed and "| fr |" in printed and "learning_curves.png" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert main(["export", str(out / "model.safetensors"), "--keep", "main", "--out", str(tmp_path / "plain.safetensors")]) == 0
    plain = r18lab.create_model("resnet18", num_classes=4, width=0.0625)
    load_weights(plain, tmp_path / "plain.safetensors")  # strict: exactly the plain architecture
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "plain.safetensors"), "synthetic", "--json"]) == 2  # 10 vs 4 classes
    err = capsys.readouterr().err
    assert "classes" in err


def test_export_reproduces_main_head_accuracy(tmp_path, capsys, monkeypatch):
    out = tmp_path / "fr"
    args = tiny("model.heads=[main, fr]", "data.options={num_classes: 10, image_size: 8, n: 128}")
    assert main(["train", *args, "--out", str(out)]) == 0
    acc_main = json.loads((out / "summary.json").read_text())["final"]["eval/main/acc"]
    main(["export", str(out / "model.safetensors"), "--out", str(tmp_path / "plain.safetensors")])
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "plain.safetensors"), "synthetic", "image_size=8", "n=128", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [k for k in res if k.startswith("eval/")] == ["eval/main/acc", "eval/main/balanced_acc", "eval/main/loss"]
    assert sum(map(sum, res["per_class"]["heads"]["main"]["confusion"])) == 128  # every test image counted once
    assert res["eval/main/acc"] == acc_main  # the exported plain model is the trained main head, exactly


def test_runs_list_and_show(tmp_path, capsys):
    out = tmp_path / "r1"
    main(["train", *tiny(), "--out", str(out)])
    capsys.readouterr()
    assert main(["runs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["status"] == "done" and rows[0]["metrics"]["eval/main/acc"] >= 0
    assert main(["runs", "show", rows[0]["run_id"]]) == 0
    assert main(["runs", "show", "nope"]) == 2  # an unknown id is a bad argument


def test_models_info_json(tmp_path, capsys):
    assert main(["models", "info", "resnet18", "num_classes=10", "heads=[main, fr]", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 11_173_962 + 42_058
    assert info["head_params"] == {"main": 5_130, "fr": 42_058}
    assert info["flops"] == 555_422_720 + 512 * 64 + 2 * 64 * 64 + 64 * 10  # ResNet-18 + the FR linears
    assert main(["models", "info", "resnet18", "num_classes=101", "stem=imagenet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 11_228_325


@pytest.mark.parametrize("args,needle", [
    (["train.epoch=3"], "unknown config key 'train.epoch'"),
    (["optim.name=adam"], "invalid value for 'optim.name'"),
    (["model.heads=[main, fx]"], "unknown head 'fx'"),
    (["model.name=resnet19"], "unknown backbone 'resnet19'"),
    (["train.epochs=-1"], "invalid value for 'train.epochs'"),
])
def test_invalid_config_is_one_line_exit_2(tmp_path, args, needle):
    r = run_cli("train", *tiny(*args), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_missing_dataset_and_unwritable_output(tmp_path, capsys):
    assert main(["train", *tiny("data.source=/no/such/data"), "--out", str(tmp_path / "a")]) == 1
    assert "does not exist" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("precious")
    assert main(["train", *tiny(), "--out", str(blocker / "run")]) == 1
    assert "not writable" in capsys.readouterr().err
    assert blocker.read_text() == "precious"


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    out = tmp_path / "w"
    main(["train", *tiny(), "--out", str(out)])
    wide = r18lab.create_model("resnet18", num_classes=4, width=0.125)
    from r18lab.errors import CheckpointError
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        load_weights(wide, out / "model.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "o.safetensors")]) == 1
    assert "corrupt" in capsys.readouterr().err and not (tmp_path / "o.safetensors").exists()


def test_console_script_trains_the_embedded_default(tmp_path):
    r = run_cli("train", str(ROOT / "recipes" / "demo.yaml"), "train.epochs=1", "model.width=0.0625",
                "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| main |" in r.stdout and (tmp_path / "demo" / "learning_curves.png").stat().st_size > 1000
    from r18lab.results.store import RunStore
    rows = RunStore(os.environ["R18LAB_STORE"]).list()
    assert [r["status"] for r in rows] == ["done"] and rows[0]["out_dir"].endswith("demo")


def test_bench_prints_ratios_against_same_run_references(capsys):
    assert main(["bench", "--steps", "1", "--width", "0.0625", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    for label in ("train images/s", "eval images/s", "augment images/s", "matmul peak"):
        line = next(l for l in out.splitlines() if label in l)
        ours, ref, ratio = (float(v.rstrip("G")) for v in line.split()[-3:])
        assert ours > 0 and ref > 0 and ratio == pytest.approx(ours / ref, rel=0.01)


def test_debug_flag_shows_the_traceback(tmp_path):
    r = run_cli("--debug", "train", *tiny("train.epoch=3"), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr and "unknown config key 'train.epoch'" in r.stderr


def test_public_contract_names():
    ds = r18lab.data.load("synthetic", split="test", num_classes=3, image_size=8, n=12)
    assert ds.images.shape == (12, 8, 8, 3) and ds.images.dtype.name == "uint8" and len(ds.classes) == 3
    out = r18lab.create_model("resnet18", num_classes=3, width=0.0625)(torch.randn(2, 3, 8, 8))
    assert out.logits["main"].shape == (2, 3) and out.features.ndim == 2


def test_backbone_only_export_reopens_as_a_feature_extractor(tmp_path, capsys):
    """`export --keep none` writes the backbone alone; it loads back (no heads) and gives the same features."""
    import torch
    from r18lab.models.io import load_checkpoint
    out = tmp_path / "run"
    assert main(["train", *tiny(), "--out", str(out)]) == 0
    assert main(["export", str(out / "model.safetensors"), "--keep", "none", "--out", str(tmp_path / "b.safetensors")]) == 0
    full = load_checkpoint(out / "model.safetensors", "cpu").model.eval()
    backbone = load_checkpoint(tmp_path / "b.safetensors", "cpu").model.eval()
    assert backbone.head_names == [] and backbone.fc is None
    x = torch.randn(2, 3, 8, 8)
    got = backbone(x)
    assert got.logits == {} and torch.equal(got.features, full(x).features)
    capsys.readouterr()
    assert main(["train", *tiny("model.heads=[]"), "--out", str(tmp_path / "nohead")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the model has no head to train (model.heads is empty)" in err
