"""TempBalance: the α → learning-rate map, which layers are tuned, and the hook inside the engine."""
import json

import pytest
import torch

import r18lab
from r18lab.analysis.spectrum import layer_spectra
from r18lab.config import load_config
from r18lab.errors import ConfigError
from r18lab.train.engine import Trainer
from r18lab.train.optim import set_learning_rates
from r18lab.train.hooks.tempbalance import linear_lr_scales, tuned_layers

from helpers import tiny


def test_linear_map_on_hand_values():
    scales = linear_lr_scales(torch.tensor([2.0, 3.0, 4.0, 2.5]), 0.5, 1.5)
    assert scales.tolist() == pytest.approx([0.5, 1.0, 1.5, 0.75])
    assert linear_lr_scales(torch.tensor([3.0, 3.0])).tolist() == [1.0, 1.0]


def test_first_last_and_small_layers_are_not_tuned():
    m = r18lab.create_model("resnet18", num_classes=10, width=0.125)
    spectra = layer_spectra(m)
    names = tuned_layers(m, {n: len(e) for n, e in spectra.items()}, 50)
    assert "conv1" not in names and "fc" not in names
    assert "layer1.0.conv1" in names  # 3×3, 8→8 channels: 9·8 = 72 eigenvalues
    assert "layer2.0.downsample.0" not in names  # 1×1, 8→16: 8 eigenvalues
    assert all(len(spectra[n]) >= 50 for n in names)


def test_hook_sets_group_learning_rates_and_logs_alpha(tmp_path):
    cfg = load_config(None, tiny("model.width=0.125", "model.heads=[main, fr]", "model.options={fr_dim: 64}",
                                 "hooks=[tempbalance]", "schedule.name=cosine", "train.epochs=2"))
    trainer = Trainer(cfg, tmp_path / "tb")
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    alpha_records = [r for r in records if any(k.startswith("alpha/") for k in r)]
    assert [r["epoch"] for r in alpha_records] == [0, 1, 2]
    first = alpha_records[0]  # before training: η_0 = the base lr (0.05) times each layer's scale
    assert all(first[f"lr/{k[9:]}"] == pytest.approx(0.05 * v) for k, v in first.items() if k.startswith("lr_scale/"))
    groups = {g["layer"]: g for g in trainer.optimizer.param_groups}
    scales = {layer: g["lr_scale"] for layer, g in groups.items()}
    tuned = [k[len("lr_scale/"):] for k in alpha_records[-1] if k.startswith("lr_scale/")]
    assert min(scales[t] for t in tuned) == pytest.approx(0.5) and max(scales[t] for t in tuned) == pytest.approx(1.5)
    assert scales["conv1"] == 1.0 and scales["fc"] == 1.0
    # the highest α gets the highest rate
    last = alpha_records[-1]
    top = max(tuned, key=lambda t: last[f"alpha/{t}"])
    assert scales[top] == pytest.approx(1.5)
    # lr of a group = global η_t × its scale; BatchNorm rides with its conv
    bn = trainer.model.layer1[0].bn1.weight
    assert any(p is bn for p in groups["layer1.0.conv1"]["params"])
    eta = set_learning_rates(trainer.optimizer, 0.05, 0.5)  # what the engine does before every step
    assert groups["layer1.0.conv1"]["lr"] == pytest.approx(eta * scales["layer1.0.conv1"])
    assert groups["conv1"]["lr"] == pytest.approx(0.025)


def test_bad_hook_parameters():
    from r18lab.train.hooks import build_hook
    with pytest.raises(ConfigError, match="s1 ≤ s2"):
        build_hook("tempbalance", {"s1": 2.0, "s2": 1.0})
    with pytest.raises(ConfigError, match="unknown parameter 'lr' for hook 'tempbalance'"):
        build_hook("tempbalance", {"lr": 2.0})


def test_report_plots_alpha_and_learning_rates(tmp_path, capsys):
    from r18lab.cli import main
    out = tmp_path / "tb"
    assert main(["train", *tiny("model.width=0.125", "hooks=[tempbalance]", "train.epochs=1"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("learning_curves.png", "alpha_by_epoch.png", "lr_by_epoch.png"):
        assert name in printed and (out / name).stat().st_size > 1000


def test_each_peer_of_a_peer_group_is_balanced(tmp_path):
    cfg = load_config(None, tiny("model.width=0.125", "model.peers=2", "objective=[ce, dml]", "hooks=[tempbalance]",
                                 "train.epochs=1"))
    trainer = Trainer(cfg, tmp_path / "dml")
    trainer.fit()
    scales = {g["layer"]: g["lr_scale"] for g in trainer.optimizer.param_groups}
    for peer in ("peers.0.", "peers.1."):
        tuned = [v for k, v in scales.items() if k.startswith(peer) and v != 1.0]
        assert min(tuned) == pytest.approx(0.5) and max(tuned) == pytest.approx(1.5)
        assert scales[peer + "conv1"] == 1.0 and scales[peer + "fc"] == 1.0


def test_analyze_spectrum_cli_contract(tmp_path, capsys):
    from r18lab.cli import main
    runs = {}
    for name, extra in (("base", []), ("tb", ["hooks=[tempbalance]"])):
        runs[name] = tmp_path / name / "seed0"
        assert main(["train", *tiny("model.width=0.125", "train.epochs=1", *extra), "--out", str(runs[name])]) == 0
    capsys.readouterr()
    weights = str(runs["base"] / "model.safetensors")
    assert main(["analyze", "spectrum", weights, "--xmin", "ks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    model = r18lab.create_model("resnet18", num_classes=4, width=0.125)
    assert [r["name"] for r in rows] == list(layer_spectra(model))  # depth order, every Conv/Linear
    for r in rows:
        assert {"name", "alpha", "xmin", "num_evals", "lambda_max"} <= set(r)
    assert rows[1]["num_evals"] == 9 * 8  # layer1.0.conv1: 3×3 slices of 8×8
    plot = tmp_path / "alpha.png"
    assert main(["analyze", "spectrum", weights, str(runs["tb"] / "model.safetensors"), "--plot", str(plot),
                 "--esd-layer", "layer1.0.conv1", "--esd-plot", str(tmp_path / "esd.png")]) == 0
    out = capsys.readouterr().out
    assert "### base/seed0" in out and "### tb/seed0" in out
    assert plot.stat().st_size > 1000 and (tmp_path / "esd.png").stat().st_size > 1000
    assert main(["analyze", "spectrum", weights, "--esd-layer", "nope", "--esd-plot", str(tmp_path / "x.png")]) == 2
