"""Acquisition functions (issue 12) and LLAL: the loss-prediction head, its ranking objective, the detach hook."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import r18lab.protocols.acquisition as acq
from r18lab.config import load_config
from r18lab.errors import ConfigError
from r18lab.models import create_model
from r18lab.models.io import load_checkpoint
from r18lab.models.llal import LossPredictionHead, llal_param_count
from r18lab.objectives.base import Batch, ObjectiveContext, build_objective
from r18lab.objectives.llal import ranking_loss
from r18lab.protocols.acquisition import ACQUISITIONS, AcquisitionInputs, acquire
from r18lab.train.engine import train
from r18lab.train.hooks import build_hook
from r18lab.train.hooks.llal_detach import default_detach_epoch

from helpers import tiny

CPU = torch.device("cpu")


# -- coreset ------------------------------------------------------------------------------------------------
def brute_force_k_center(labelled, candidates, k):
    """Textbook greedy k-center on explicit float64 Euclidean distances; ties to the lowest index, no re-pick."""
    cand = np.asarray(candidates, dtype=np.float64)
    pool = np.asarray(labelled, dtype=np.float64)
    dist = np.array([min((np.linalg.norm(c - q) for q in pool), default=np.inf) for c in cand])
    picks = []
    for _ in range(k):
        best = max((i for i in range(len(cand)) if i not in picks), key=lambda i: (dist[i], -i))
        picks.append(best)
        dist = np.minimum(dist, np.linalg.norm(cand - cand[best], axis=1))
    return np.array(picks)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("options", [{}, {"chunk_elements": 7, "block": 3}])
def test_coreset_matches_brute_force_on_random_data(seed, options):
    rng = np.random.default_rng(seed)
    pool, cand = rng.standard_normal((rng.integers(0, 25), 5)), rng.standard_normal((40, 5))
    k = int(rng.integers(1, 41))
    got, picked_at, to_pool = acq.k_center_greedy(pool, cand, k, **options)
    assert got.tolist() == brute_force_k_center(pool, cand, k).tolist()
    assert got.tolist() == acq.coreset(pool, cand, k).tolist()
    assert len(set(got.tolist())) == k
    np.testing.assert_allclose(to_pool, [min((np.linalg.norm(c - q) for q in pool), default=np.inf) for c in cand])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("options", [{}, {"chunk_elements": 5, "block": 4}])
def test_coreset_breaks_ties_like_brute_force(seed, options):
    """Integer points on a 4×4 grid: many equal distances and duplicates (exact in float arithmetic), all picked."""
    rng = np.random.default_rng(100 + seed)
    pool = rng.integers(0, 4, (2, 2)).astype(np.float32)
    cand = rng.integers(0, 4, (60, 2)).astype(np.float32)
    got = acq.k_center_greedy(pool, cand, 60, **options)[0]
    assert got.tolist() == brute_force_k_center(pool, cand, 60).tolist()


def test_coreset_hand_example_and_its_scores():
    pool, cand = np.array([[0.0]]), np.array([[1.0], [5.0], [2.0], [10.0], [9.0]])
    sel = acquire("coreset", AcquisitionInputs(features=cand, labelled_features=pool), 2)
    assert sel.indices.tolist() == [3, 1]  # 10 is farthest from 0; then 5 (min(5, 5)) beats 2 and 9 (min(9, 1))
    assert sel.pick_scores.tolist() == [10.0, 5.0]
    assert sel.scores.tolist() == [1.0, 5.0, 2.0, 10.0, 9.0]
    # a tie (-3 and 3 both at distance 3) goes to the lower index
    assert acq.coreset(np.array([[0.0]]), np.array([[-3.0], [3.0], [1.0]]), 2).tolist() == [0, 1]


def test_coreset_start_is_computed_in_chunks(monkeypatch):
    shapes = []
    real = acq._squared_distances
    monkeypatch.setattr(acq, "_squared_distances", lambda x, x_sq, c: shapes.append((len(x), len(c))) or
                        real(x, x_sq, c))
    rng = np.random.default_rng(0)
    pool, cand = rng.standard_normal((30, 4)), rng.standard_normal((10, 4))
    got = acq.k_center_greedy(pool, cand, 3, chunk_elements=40)[0]
    assert max(a * b for a, b in shapes) <= 40  # never the whole 10×30 matrix
    assert got.tolist() == brute_force_k_center(pool, cand, 3).tolist()


# -- ranked acquisitions --------------------------------------------------------------------------------------
def test_entropy_hand_values_and_picks():
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    np.testing.assert_allclose(acq.entropy_scores(probs),
                               [math.log(2), 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    assert acq.entropy(probs, 2).tolist() == [0, 2]


def test_margin_hand_values_picks_smallest_first():
    probs = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.4, 0.4, 0.2]])
    np.testing.assert_allclose(acq.margin_scores(probs), [0.2, 0.85, 0.0], atol=1e-15)
    assert acq.margin(probs, 2).tolist() == [2, 0]
    assert acq.margin(probs, 3).tolist() == [2, 0, 1]


def test_bald_is_mutual_information_not_predictive_entropy():
    # sample 0: confident passes that disagree (MI ln 2); 1: unsure passes that agree (MI 0, entropy ln 2); 2: sure
    mc = np.array([[[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]],
                   [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]])
    np.testing.assert_allclose(acq.bald_scores(mc), [math.log(2), 0.0, 0.0], atol=1e-15)
    assert acq.bald(mc, 1).tolist() == [0]
    assert acq.entropy(mc.mean(0), 1).tolist() == [0]  # ties at ln 2 with sample 1: lowest index
    mc3 = np.array([[[0.9, 0.1]], [[0.5, 0.5]], [[0.1, 0.9]]])  # 3 passes, one sample
    h = lambda p: -(p * np.log(p)).sum()
    np.testing.assert_allclose(acq.bald_scores(mc3), [h(np.array([0.5, 0.5])) - (2 * h(np.array([0.9, 0.1]))
                                                                                   + math.log(2)) / 3])


def test_llal_picks_the_largest_predicted_losses():
    assert acq.llal(np.array([0.1, 3.0, -1.0, 2.0]), 2).tolist() == [1, 3]
    sel = acquire("llal", AcquisitionInputs(predicted_loss=np.array([0.1, 3.0, -1.0, 2.0])), 3)
    assert sel.indices.tolist() == [1, 3, 0] and sel.pick_scores.tolist() == [3.0, 2.0, 0.1]


def test_random_is_a_seeded_subset():
    a, b, c = acq.random(50, 10, 0), acq.random(50, 10, 0), acq.random(50, 10, 1)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 10 and all(0 <= i < 50 for i in a)
    sel = acquire("random", AcquisitionInputs(count=50), 10, seed=1)
    assert sel.indices.tolist() == c.tolist()


def test_registry_has_one_signature_and_returns_the_scores():
    assert ACQUISITIONS.names() == ["bald", "coreset", "entropy", "llal", "margin", "random"]
    probs = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.4, 0.4, 0.2]])
    for name, fn in (("entropy", acq.entropy_scores), ("margin", acq.margin_scores)):
        sel = acquire(name, AcquisitionInputs(probs=probs), 2, seed=0)
        np.testing.assert_array_equal(sel.scores, fn(probs))
        np.testing.assert_array_equal(sel.pick_scores, fn(probs)[sel.indices])
    assert acquire("margin", AcquisitionInputs(probs=probs), 2).largest_first is False


@pytest.mark.parametrize("call,message", [
    (lambda: acquire("nope", AcquisitionInputs(count=3), 1),
     "unknown acquisition 'nope'; choose one of: bald, coreset, entropy, llal, margin, random"),
    (lambda: acquire("entropy", AcquisitionInputs(probs=np.full((3, 2), 0.5)), 4),
     "acquisition budget k=4 exceeds the 3 candidates"),
    (lambda: acq.coreset(np.zeros((2, 2)), np.zeros((3, 2)), 5), "acquisition budget k=5 exceeds the 3 candidates"),
    (lambda: acq.llal(np.zeros(3), 4), "acquisition budget k=4 exceeds the 3 candidates"),
    (lambda: acquire("bald", AcquisitionInputs(probs=np.full((3, 2), 0.5)), 1), "acquisition bald needs mc_probs"),
    (lambda: acq.entropy(np.array([[np.nan, 1.0]]), 1), "contain NaN or inf"),
    (lambda: acq.margin(np.ones((3, 1)), 1), "margin needs at least 2 classes"),
    (lambda: acq.coreset(np.zeros((2, 3)), np.zeros((3, 2)), 1), "coreset needs candidate features N×D"),
])
def test_bad_inputs_are_one_line_config_errors(call, message):
    with pytest.raises(ConfigError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


# -- the llal head ------------------------------------------------------------------------------------------
def test_llal_head_shape_and_param_count():
    model = create_model("resnet18", num_classes=4, width=0.0625, heads=["main", "llal"])
    plain = create_model("resnet18", num_classes=4, width=0.0625)
    head = model.heads["llal"]
    assert head.stage_channels == [4, 8, 16, 32] == model._backbone.stage_channels
    # Σ_s (C_s·128 + 128) + (4·128 + 1) with C = 4, 8, 16, 32
    expected = (4 * 128 + 128) + (8 * 128 + 128) + (16 * 128 + 128) + (32 * 128 + 128) + (4 * 128 + 1)
    assert expected == 8705 == llal_param_count([4, 8, 16, 32])
    assert sum(p.numel() for p in head.parameters()) == expected
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters()) == expected
    out = model(torch.randn(3, 3, 16, 16))
    assert out.aux["llal.loss"].shape == (3,) and model.head_names == ["main"]
    small = create_model("resnet18", num_classes=4, width=0.0625, heads=["main", {"name": "llal", "dim": 16}])
    assert sum(p.numel() for p in small.heads["llal"].parameters()) == 60 * 16 + 4 * 16 + 4 * 16 + 1


def test_llal_head_wrong_stage_widths_is_one_line():
    model = create_model("resnet18", num_classes=4, width=0.0625,
                         heads=["main", {"name": "llal", "stage_channels": [4, 8, 16, 64]}])
    with pytest.raises(ConfigError, match=r"set llal_stage_channels=\[4, 8, 16, 32\]"):
        model(torch.randn(1, 3, 16, 16))


# -- the ranking objective ----------------------------------------------------------------------------------
def test_ranking_loss_hand_example():
    pred = torch.tensor([0.5, 2.0, 1.0, 0.0])
    target = torch.tensor([1.0, 1.5, 2.0, 0.5])
    # pairs (0, 3): l0 > l3, s = +1, l̂0 − l̂3 = 0.5 → max(0, −0.5 + 1) = 0.5
    #       (1, 2): l1 < l2, s = −1, l̂1 − l̂2 = 1.0 → max(0, 1.0 + 1) = 2.0;  mean over the 2 pairs = 1.25
    assert ranking_loss(pred, target).item() == 1.25
    assert ranking_loss(pred, target, margin=0.5).item() == 0.75  # (0 + 1.5) / 2
    # the reference counts a tie as s = −1: max(0, 0.3 + 1) = 1.3 (sign() would give 1)
    assert ranking_loss(torch.tensor([0.3, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(1.3)
    # odd batch: the middle sample is unpaired; pairs (0, 4), (1, 3)
    five = ranking_loss(torch.tensor([0.5, 2.0, 9.0, 1.0, 0.0]), torch.tensor([1.0, 1.5, 0.0, 2.0, 0.5]))
    assert five.item() == 1.25
    assert ranking_loss(torch.tensor([1.0]), torch.tensor([2.0])).item() == 0.0


def _ctx(model):
    return ObjectiveContext(model.head_names, model.num_classes, CPU, logit_names=model.logit_names,
                            aux_names=model.aux_names, head_modules=dict(model.heads))


def test_llal_objective_targets_are_the_detached_main_ce():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, width=0.0625, heads=["main", "llal"])
    obj = build_objective("llal", {"weight": 2.0, "margin": 0.5}, _ctx(model))
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    out = model(x)
    term = obj(out, Batch(x, y))["llal"]
    ce = F.cross_entropy(out.logits["main"], y, reduction="none")
    assert term.item() == pytest.approx(2.0 * ranking_loss(out.aux["llal.loss"], ce, 0.5).item())
    term.backward()
    assert model.fc.weight.grad is None  # the target losses are detached: no gradient into the classifier
    assert model.conv1.weight.grad.abs().sum() > 0


def test_llal_objective_without_its_head_is_one_line():
    model = create_model("resnet18", num_classes=4, width=0.0625)
    with pytest.raises(ConfigError, match=r"objective llal needs the model's 'llal' head .*model.heads=\[main, llal\]"):
        build_objective("llal", {}, _ctx(model))
    with pytest.raises(ConfigError, match="target head 'fr' is not among the model's logits"):
        build_objective("llal", {"target": "fr"}, _ctx(create_model("resnet18", num_classes=4, width=0.0625,
                                                                    heads=["main", "llal"])))


def test_llal_objective_reads_the_named_head_and_target():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, width=0.0625,
                         heads=["main", "fr", {"name": "lp", "type": "llal"}])
    with pytest.raises(ConfigError, match="needs the model's 'llal' head"):
        build_objective("llal", {}, _ctx(model))
    obj = build_objective("llal", {"head": "lp", "target": "fr"}, _ctx(model))
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    out = model(x)
    expected = ranking_loss(out.aux["lp.loss"], F.cross_entropy(out.logits["fr"], y, reduction="none"))
    assert obj(out, Batch(x, y))["llal"].item() == expected.item()
    other = ranking_loss(out.aux["lp.loss"], F.cross_entropy(out.logits["main"], y, reduction="none"))
    assert expected.item() != other.item()


# -- the detach hook ----------------------------------------------------------------------------------------
def test_default_detach_epoch_is_120_of_200_scaled():
    assert default_detach_epoch(200) == 120 and default_detach_epoch(10) == 6


@pytest.mark.parametrize("options,epochs,attached,detached", [
    ({"epoch": 1}, 3, 1, 2),   # detached once the 0-based epoch > 1 (the reference's `epoch > epoch_loss`)
    ({}, 10, 6, 7),            # default 0.6·10 = 6
])
def test_detach_hook_stops_the_ranking_gradient_into_the_backbone(options, epochs, attached, detached):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, width=0.0625, heads=["main", "llal"])
    hook = build_hook("llal_detach", options)
    ctx = SimpleNamespace(model=model, cfg=SimpleNamespace(train=SimpleNamespace(epochs=epochs)))
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])

    def grads(epoch):
        hook.on_epoch_start(ctx, epoch)
        model.zero_grad(set_to_none=True)
        out = model(x)
        ranking_loss(out.aux["llal.loss"], F.cross_entropy(out.logits["main"], y, reduction="none")).backward()
        backbone = model.conv1.weight.grad
        return (0.0 if backbone is None else backbone.abs().sum().item(),
                model.heads["llal"].fc.weight.grad.abs().sum().item())

    before, after = grads(attached), grads(detached)
    assert before[0] > 0 and before[1] > 0
    assert after[0] == 0.0 and after[1] > 0  # the head still learns; the backbone gets nothing from the ranking
    record = {}
    hook.on_epoch_end(ctx, detached, record)
    assert record == {"llal/detached": 1.0}


def test_detach_hook_needs_the_head_and_a_valid_epoch():
    model = create_model("resnet18", num_classes=4, width=0.0625)
    ctx = SimpleNamespace(model=model, cfg=SimpleNamespace(train=SimpleNamespace(epochs=3)))
    with pytest.raises(ConfigError, match=r"hook llal_detach needs a llal head"):
        build_hook("llal_detach", {}).on_epoch_start(ctx, 0)
    with pytest.raises(ConfigError, match="llal_detach epoch must be a whole number"):
        build_hook("llal_detach", {"epoch": -1})


# -- through the engine -------------------------------------------------------------------------------------
def test_one_training_run_through_the_engine(tmp_path):
    cfg = load_config(None, tiny("model.heads=[main, llal]", "objective=[ce, llal]",
                                 "hooks=[{name: llal_detach, epoch: 0}]"))
    summary = train(cfg, tmp_path / "run")
    assert "eval/main/acc" in summary["final"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["llal/detached"] for r in records] == [0.0, 1.0]
    assert all(r["train/llal"] > 0 for r in records)
    assert all(r["train/loss"] == pytest.approx(r["train/ce/main"] + r["train/llal"], rel=1e-5) for r in records)
    model = load_checkpoint(tmp_path / "run" / "model.safetensors", "cpu").model.eval()
    assert isinstance(model.heads["llal"], LossPredictionHead)
    assert model(torch.randn(2, 3, 8, 8)).aux["llal.loss"].shape == (2,)
