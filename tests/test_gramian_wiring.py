"""Issue 11's wiring around the Gramian heads: per-head cross-entropy, `analyze ensemble`, `eval --heads`,
`export --keep none` and the recipe (paper 004; spec 004 §A.10, §B.5, §F)."""
import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import r18lab
from r18lab.analysis.cost import head_params
from r18lab.analysis.ensemble import soft_strength_correlation, strength_correlation
from r18lab.cli import main
from r18lab.config import build_config, resolve_tree
from r18lab.errors import ConfigError
from r18lab.models.gramian import combine_logits
from r18lab.models.io import build_from_spec, load_checkpoint, model_spec, save_model
from r18lab.objectives.base import Batch, ObjectiveContext, build_objectives
from r18lab.predict import predict
from r18lab.protocols.lowdata import parse_settings, plan

from helpers import tiny

ROOT = Path(__file__).resolve().parents[1]
DATA = ["synthetic", "num_classes=4", "image_size=8", "n=128"]
DATA_OPTIONS = {"num_classes": 4, "image_size": 8, "n": 128}


@pytest.fixture(scope="module")
def ga_ckpt(tmp_path_factory) -> Path:
    """A tiny GA model (3 heads) trained with Σ_k CE(z_k, y) + decorrelation; its model.safetensors."""
    root = tmp_path_factory.mktemp("ga")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R18LAB_CACHE", str(root / "cache"))
        mp.setenv("R18LAB_STORE", str(root / "index.sqlite"))
        argv = ["train", *tiny("model.heads=[ga]", "model.options={ga_count: 3, ga_dim: 15}",
                               "objective=[{name: ce, heads: ga.*}, decorrelation]"), "--out", str(root / "run")]
        assert main(argv) == 0
    return root / "run" / "model.safetensors"


def one_line_error(capsys, argv) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- per-head cross-entropy ------------------------------------------------------------------------------------
class Out:
    def __init__(self, logits):
        self.logits = logits


def ctx() -> ObjectiveContext:
    return ObjectiveContext(["ga"], 2, torch.device("cpu"), logit_names=["ga", "ga.0", "ga.1"])


def test_per_head_ce_is_the_sum_over_sub_heads_not_the_ce_of_the_combined_logits():
    z0, z1, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    out = Out({"ga": z0 + z1, "ga.0": z0, "ga.1": z1})
    (star,) = build_objectives([{"name": "ce", "heads": "ga.*"}], ctx())
    (listed,) = build_objectives([{"name": "ce", "heads": ["ga.0", "ga.1"]}], ctx())
    (combined,) = build_objectives(["ce"], ctx())  # default: every top-level head = the summed logits
    assert star.terms == listed.terms == ["ce/ga.0", "ce/ga.1"] and combined.terms == ["ce/ga"]
    per_head = sum(star(out, Batch(None, y)).values()).item()
    # CE((0, 0), 0) = log 2; CE((2, 0), 0) = log(1 + e⁻²); their sum, vs CE of the sum (2, 0) alone
    assert per_head == pytest.approx(math.log(2) + math.log1p(math.exp(-2)), abs=1e-6)
    assert per_head == pytest.approx(0.820075, abs=1e-6)
    assert sum(listed(out, Batch(None, y)).values()).item() == pytest.approx(per_head, abs=1e-7)
    assert combined(out, Batch(None, y))["ce/ga"].item() == pytest.approx(math.log1p(math.exp(-2)), abs=1e-6)


@pytest.mark.parametrize("heads,words", [(["ga.7"], "'ga.7'"), ("fr.*", "matches no sub-head"),
                                         (["ga", "nope"], "'nope'")])
def test_per_head_ce_names_are_checked_against_the_model_logits(heads, words):
    with pytest.raises(ConfigError, match=words) as err:
        build_objectives([{"name": "ce", "heads": heads}], ctx())
    assert "\n" not in str(err.value)


def test_trained_checkpoint_logged_every_sub_head_term(ga_ckpt):
    last = json.loads((ga_ckpt.parent / "metrics.jsonl").read_text().splitlines()[-1])
    ce = [last[f"train/ce/ga.{i}"] for i in range(3)]
    assert "train/ce/ga" not in last
    assert last["train/loss"] == pytest.approx(sum(ce) + last["train/decorrelation/ga"], rel=1e-4)


# -- analyze ensemble ------------------------------------------------------------------------------------------
def test_analyze_ensemble_of_one_checkpoints_heads(ga_ckpt, tmp_path, capsys):
    table, png = tmp_path / "e.csv", tmp_path / "e.png"
    assert main(["analyze", "ensemble", str(ga_ckpt), "--data", *DATA, "--csv", str(table), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "| label" in printed and "strength" in printed and f"plot: {png}" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (row,) = list(csv.DictReader(table.open()))

    preds = predict(ga_ckpt, "synthetic", data_options=DATA_OPTIONS)
    z = np.stack([preds.logits[f"ga.{i}"] for i in range(3)]).astype(np.float64)
    hard = strength_correlation(z.argmax(2), preds.labels, 4)
    soft = soft_strength_correlation(np.exp(z) / np.exp(z).sum(2, keepdims=True), preds.labels)
    assert row["head"] == "ga" and row["members"] == "3" and row["member_names"] == "ga.0,ga.1,ga.2"

    def same(cell, value):
        return cell == "" if not math.isfinite(value) else float(cell) == pytest.approx(value, abs=1e-9)

    for key in ("strength", "correlation", "bound"):
        assert same(row[key], hard[key]) and same(row[f"soft_{key}"], soft[key]), key
    assert int(row["excluded_pairs"]) == hard["excluded_pairs"]
    acc = float((preds.logits["ga"].argmax(1) == preds.labels).mean() * 100)
    assert float(row["combined_acc"]) == pytest.approx(acc)

    assert main(["analyze", "ensemble", str(ga_ckpt), "--data", *DATA, "--json"]) == 0
    (js,) = json.loads(capsys.readouterr().out)["rows"]
    assert js["strength"] == pytest.approx(hard["strength"]) and js["pairs"] == hard["pairs"]


def test_analyze_ensemble_over_checkpoints_groups_by_label(ga_ckpt, tmp_path, capsys):
    copy = tmp_path / "copy" / "model.safetensors"
    copy.parent.mkdir()
    copy.write_bytes(ga_ckpt.read_bytes())
    argv = ["analyze", "ensemble", str(ga_ckpt), str(copy), "--data", *DATA, "--members", "checkpoints",
            "--head", "ga", "--labels", "a,a", "--json"]
    assert main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    votes = predict(ga_ckpt, "synthetic", data_options=DATA_OPTIONS)
    twice = np.stack([votes.logits["ga"].argmax(1)] * 2)
    ref = strength_correlation(twice, votes.labels, 4)
    assert row["label"] == "a" and row["members"] == 2 and row["strength"] == pytest.approx(ref["strength"])
    assert row["excluded_pairs"] == 1 or row["correlation"] == pytest.approx(1.0)  # identical members


@pytest.mark.parametrize("change", [{"classes": ("cat", "dog", "car", "ship")}, {"input_size": (3, 16, 16)}])
def test_analyze_ensemble_refuses_checkpoints_of_different_datasets(ga_ckpt, tmp_path, capsys, change):
    lm = load_checkpoint(ga_ckpt)
    other = tmp_path / "other.safetensors"
    save_model(lm.model, other, lm.spec, preprocessing=replace(lm.preprocessing, **change), identity="x")
    line = one_line_error(capsys, ["analyze", "ensemble", ga_ckpt, other, "--data", *DATA])
    assert "different datasets" in line and str(other) in line


# -- partial deployment --------------------------------------------------------------------------------------
def test_eval_heads_subset_is_the_combination_of_those_heads(ga_ckpt, capsys):
    assert main(["eval", str(ga_ckpt), *DATA, "--heads", "ga.0,ga.2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    preds = predict(ga_ckpt, "synthetic", data_options=DATA_OPTIONS)
    z = combine_logits([torch.from_numpy(preds.logits["ga.0"]), torch.from_numpy(preds.logits["ga.2"])], "sum")
    y = torch.from_numpy(preds.labels)
    assert res["heads"] == ["ga.0", "ga.2"] and res["combine"] == "sum"
    assert res["eval/ga.0+ga.2/acc"] == pytest.approx(float((z.argmax(1) == y).float().mean() * 100))
    assert res["eval/ga.0+ga.2/loss"] == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-5)

    assert main(["eval", str(ga_ckpt), *DATA, "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    picks = []
    for _ in range(2):
        assert main(["eval", str(ga_ckpt), *DATA, "--heads", "ga:random", "--seed", "5", "--json"]) == 0
        one = json.loads(capsys.readouterr().out)
        (key,) = one["heads"]
        picks.append(key)
        assert one["seed"] == 5 and one[f"eval/{key}/acc"] == pytest.approx(full[f"eval/{key}/acc"])
    assert picks[0] == picks[1]  # the draw depends only on the seed


@pytest.mark.parametrize("heads,words", [("ga.0,main", "'main'"), ("ga.9", "'ga.9'"), ("main:random", "main")])
def test_eval_bad_heads_are_one_line(ga_ckpt, capsys, heads, words):
    assert words in one_line_error(capsys, ["eval", ga_ckpt, *DATA, "--heads", heads])


def test_export_backbone_only_loads_into_a_plain_resnet18(ga_ckpt, tmp_path, capsys):
    out = tmp_path / "backbone.safetensors"
    assert main(["export", str(ga_ckpt), "--keep", "none", "--out", str(out)]) == 0
    state = load_file(str(out))
    assert not any(k.startswith(("fc.", "heads.")) for k in state)
    plain = r18lab.create_model("resnet18", num_classes=4, width=0.0625)
    result = plain.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    trained = load_checkpoint(ga_ckpt).model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in plain.state_dict().items() if not k.startswith("fc."))
    capsys.readouterr()
    assert "--keep none alone" in one_line_error(capsys, ["export", ga_ckpt, "--keep", "none,ga", "--out",
                                                          tmp_path / "x.safetensors"])


# -- the recipe ------------------------------------------------------------------------------------------------
ARMS = ["gap-fc", "gap-fc-x5-matched", "ga-1", "ga-5", "ga-5-dec0.8", "ca-token-5", "ca-token-5-ls1"]


@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_recipe_parses_and_its_arms_build(scale, tmp_path):
    settings, base = parse_settings(resolve_tree(ROOT / "recipes" / "gramian_cifar10.yaml", [], scale))
    assert settings.methods == ARMS and settings.seeds == [0, 1, 2] and settings.labels == [50000]
    specs = plan(settings, base, tmp_path, protocol="compare")
    assert len(specs) == 21 and len({s.identity for s in specs}) == 21
    width, dim = (0.25, 32) if scale == "tiny" else (1.0, 128)
    heads = {"gap-fc": "main", "gap-fc-x5-matched": "multi_fc", "ga-1": "ga", "ga-5": "ga", "ga-5-dec0.8": "ga",
             "ca-token-5": "ca_token", "ca-token-5-ls1": "ca_token"}
    for spec in specs:
        if spec.tags["seed"] != 0 or (scale == "paper" and spec.tags["method"] not in ("ga-5", "gap-fc-x5-matched")):
            continue
        cfg = build_config(spec.config)
        assert cfg.model.width == width and spec.eval_head == heads[spec.tags["method"]]
        model = build_from_spec(model_spec(cfg, 10))
        objectives = build_objectives(cfg.objective, ObjectiveContext(
            model.head_names, 10, torch.device("cpu"), logit_names=model.logit_names))
        terms = [t for o in objectives for t in o.terms]
        method, params = spec.tags["method"], head_params(model)
        if method.startswith("ga-5"):
            assert model.heads["ga"].gram_dim == dim and terms[:5] == [f"ce/ga.{i}" for i in range(5)]
            assert terms[5:] == (["decorrelation/ga"] if method == "ga-5-dec0.8" else [])
            target = params["ga"]
        if method == "gap-fc-x5-matched":
            assert len(model.heads["multi_fc"].classifiers) == 5 and terms == [f"ce/multi_fc.{i}" for i in range(5)]
            matched = params["multi_fc"]
        if method == "ga-1":
            assert terms == ["ce/ga.0"]
        if method.startswith("ca-token-5"):
            assert terms == [f"ce/ca_token.{i}" for i in range(5)]
            gamma = model.heads["ca_token"].branches[0].attn.gamma_1.detach()
            assert float(gamma[0]) == pytest.approx(1.0 if method.endswith("ls1") else 1e-4)
    assert abs(matched - target) <= 5 * (int(512 * width) + 13) / 2  # matched to the 5 GA heads, to rounding
