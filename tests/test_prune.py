"""Pruning at initialisation (spec 002a): exact mask sizes, score formulas on hand cases, ERK, SynFlow's
conservation, the `prune` hook in training (masks stay, resume keeps them, restart from θ0) and its bad inputs."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from r18lab.cli import main
from r18lab.models.classifier import create_model
from r18lab.pruning.io import MaskFile, load_masks, save_masks
from r18lab.pruning.scores import SCORES, ScoreContext, prunable
from r18lab.pruning.select import (erk_densities, global_mask, layer_mask, round_densities, select,
                                   shuffle_within_layers)
from r18lab.train import checkpoint as ckpt
from r18lab.train.hooks import build_hook
from tests.helpers import tiny


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ctx(key: str = "out", shape=(2,), temperature: float = 200.0) -> ScoreContext:
    return ScoreContext(key, shape, gen(), temperature)


# -- the prunable set and exact mask sizes ------------------------------------------------------------
def test_resnet18_cifar_has_11164352_prunable_weights():
    """Spec §3.1: all conv + fc weights = 11,173,962 − 9,600 BN − 10 fc bias."""
    model = create_model("resnet18", num_classes=10)
    weights = prunable(model)
    assert sum(w.numel() for w in weights.values()) == 11_164_352
    assert list(weights)[0] == "conv1.weight" and list(weights)[-1] == "fc.weight"
    assert len(prunable(model, "no_first_last")) == len(weights) - 2


@pytest.mark.parametrize("density", [0.05, 0.1, 1 / 3, 1.0])
def test_global_and_layer_masks_keep_exactly_floor_dN_even_with_ties(density):
    scores = {"a": torch.zeros(7, 5), "b": torch.ones(13), "c": torch.randint(0, 2, (4, 4, 3)).float()}
    n = sum(s.numel() for s in scores.values())
    masks = global_mask(scores, density, gen())
    assert sum(int(m.sum()) for m in masks.values()) == math.floor(density * n)
    local = layer_mask(scores, {k: density for k in scores}, gen())
    assert all(int(m.sum()) == math.floor(density * m.numel()) for m in local.values())


def test_global_mask_keeps_the_highest_scores_and_breaks_ties_by_seed():
    scores = {"a": torch.tensor([5.0, 1.0, 1.0, 1.0]), "b": torch.tensor([0.0, 9.0])}
    masks = global_mask(scores, 0.5, gen(0))  # k = 3: 9, 5, and one of the three tied 1.0
    assert masks["b"].tolist() == [False, True] and masks["a"][0] and int(masks["a"][1:].sum()) == 1
    picks = {tuple(global_mask(scores, 0.5, gen(s))["a"].tolist()) for s in range(20)}
    assert len(picks) > 1  # the tie goes to different weights for different seeds ...
    assert global_mask(scores, 0.5, gen(3))["a"].tolist() == global_mask(scores, 0.5, gen(3))["a"].tolist()


def test_pruned_entries_never_come_back():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    alive = {"a": torch.tensor([True, True, False, False])}
    assert global_mask(scores, 0.5, gen(), alive)["a"].tolist() == [True, True, False, False]


def test_round_densities_exponential_and_linear():
    assert round_densities(0.01, 2) == pytest.approx([0.1, 0.01])
    assert round_densities(0.2, 4, "linear") == pytest.approx([0.8, 0.6, 0.4, 0.2])


def test_erk_densities_match_a_hand_computation_with_capping():
    """ε = 0.5·1384/71 makes layers a and c exceed 1: they go dense, and b takes the rest: 460/1152."""
    shapes = {"a": torch.Size((8, 1, 3, 3)), "b": torch.Size((16, 8, 3, 3)), "c": torch.Size((10, 16))}
    d = erk_densities(shapes, 0.5)
    assert d["a"] == 1.0 and d["c"] == 1.0 and d["b"] == pytest.approx(460 / 1152)
    low = erk_densities(shapes, 0.05)  # no capping: d_l ∝ (Σ dims)/(Π dims)
    eps = 0.05 * 1384 / (15 + 30 + 26)
    assert low == pytest.approx({"a": eps * 15 / 72, "b": eps * 30 / 1152, "c": eps * 26 / 160})
    masks = select({k: torch.randn(s) for k, s in shapes.items()}, 0.5, "erk", gen())
    assert int(masks["b"].sum()) == math.floor(460 / 1152 * 1152) and bool(masks["a"].all())


def test_shuffle_keeps_layer_densities_and_moves_weights():
    masks = global_mask({"a": torch.arange(100.0), "b": torch.arange(50.0)}, 0.3, gen())
    shuffled = shuffle_within_layers(masks, gen(1))
    assert {k: int(v.sum()) for k, v in shuffled.items()} == {k: int(v.sum()) for k, v in masks.items()}
    assert not torch.equal(shuffled["a"], masks["a"])


# -- scores on hand cases ------------------------------------------------------------------------------
class Linear2(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        self.fc.weight.data = torch.tensor(w)

    def forward(self, x):
        return self.fc(x)


def test_snip_is_abs_gradient_times_weight_normalised():
    """z = Wx, g = (softmax(z) − e_y) xᵀ; with W = [[1, 0], [0, 2]], x = (1, 1), y = 0: z = (1, 2)."""
    model = Linear2([[1.0, 0.0], [0.0, 2.0]])
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([0])
    p = torch.softmax(torch.tensor([1.0, 2.0]), 0)
    g = torch.outer(p - torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    expected = (g * model.fc.weight.detach()).abs()
    got = SCORES.get("snip")(model, prunable(model), [(x, y)], ctx())["fc.weight"]
    assert torch.allclose(got, expected / expected.sum())
    assert float(got.sum()) == pytest.approx(1.0)
    assert got[0, 1] == 0 and got[0, 0] > 0  # the zero weight scores 0


def test_grasp_matches_an_explicit_hessian_gradient_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    batches = [(torch.randn(5, 3), torch.randint(0, 3, (5,))), (torch.randn(5, 3), torch.randint(0, 3, (5,)))]
    weights = prunable(model)
    names = list(weights)
    scores = SCORES.get("grasp")(model, weights, batches, ctx(temperature=2.0))
    params = dict(model.named_parameters())

    def loss_of(flat, x, y):
        w0, w2 = flat[:12].view(4, 3), flat[12:].view(3, 4)
        z = torch.tanh(x @ w0.T + params["0.bias"]) @ w2.T + params["2.bias"]
        return F.cross_entropy(z / 2.0, y)

    flat = torch.cat([weights[n].detach().flatten() for n in names])
    g = sum(torch.autograd.functional.jacobian(lambda f: loss_of(f, x, y), flat) for x, y in batches)
    hg = sum(torch.autograd.functional.hessian(lambda f: loss_of(f, x, y), flat) @ g for x, y in batches)
    raw = flat * hg
    expected = raw / (raw.sum().abs() + 1e-10)
    got = torch.cat([scores[n].flatten() for n in names])
    assert torch.allclose(got, expected, atol=1e-6)
    assert float(got.sum().abs()) == pytest.approx(1.0, abs=1e-6)


def test_synflow_scores_are_conserved_across_layers_of_a_relu_mlp():
    """Tanaka et al. 2020: on a bias-free ReLU chain, every layer's summed SynFlow score is R."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 5, bias=False), nn.ReLU(),
                          nn.Linear(5, 3, bias=False))
    before = [p.detach().clone() for p in model.parameters()]
    scores = SCORES.get("synflow")(model, prunable(model), [], ctx(shape=(6,)))
    sums = [float(s.sum()) for s in scores.values()]
    assert sums == pytest.approx([sums[0]] * 3, rel=1e-5)
    with torch.no_grad():
        r = (torch.ones(1, 6) @ before[0].abs().T @ before[1].abs().T @ before[2].abs().T).sum()
    assert sums[0] == pytest.approx(float(r), rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # signs restored


def test_synflow_restores_batchnorm_statistics():
    model = create_model("resnet18", num_classes=3, width=0.0625)
    with torch.no_grad():
        model.bn1.bias.fill_(-0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    SCORES.get("synflow")(model.eval(), prunable(model), [], ctx("main", (3, 8, 8)))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_magnitude_and_random():
    model = Linear2([[1.0, -3.0], [0.5, 2.0]])
    assert SCORES.get("magnitude")(model, prunable(model), [], ctx())["fc.weight"].tolist() == [[1, 3], [0.5, 2]]
    a = SCORES.get("random")(model, prunable(model), [], ctx())["fc.weight"]
    assert a.shape == (2, 2) and not torch.equal(a, SCORES.get("random")(model, prunable(model), [], ScoreContext(
        "out", (2,), gen(1)))["fc.weight"])


# -- the hook in a training run ------------------------------------------------------------------------
def run(tmp_path, name, *hook_and_more, capsys=None):
    out = tmp_path / name
    rc = main(["train", *tiny("train.epochs=3", "optim.momentum=0.9", "optim.weight_decay=0.01"),
               *hook_and_more, "--out", str(out)])
    return rc, out


@pytest.mark.parametrize("method, extra", [("snip", ""), ("synflow", ", rounds: 5"), ("grasp", ""),
                                           ("erk", ""), ("magnitude", ", scope: layer")])
def test_masked_weights_stay_zero_through_training_with_momentum_and_weight_decay(tmp_path, method, extra):
    rc, out = run(tmp_path, method, f"hooks=[{{name: prune, method: {method}, density: 0.2{extra}}}]")
    assert rc == 0
    masks = load_masks(out)
    final = load_file(str(out / "model.safetensors"))
    n = sum(m.numel() for m in masks.masks.values())
    kept = sum(int(m.sum()) for m in masks.masks.values())
    if masks.meta["scope"] == "global":
        assert kept == math.floor(0.2 * n)
    for name, m in masks.masks.items():
        assert bool((final[name][~m] == 0).all()), name  # pruned: exactly zero after 12 SGD steps
        assert bool((final[name][m] != 0).any()), name if m.any() else None
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "prune/density" in line]
    assert record[0]["prune/sparsity"] == pytest.approx(1 - record[0]["prune/density"])
    assert masks.meta["method"] == method and masks.meta["prune_step"] == 0


def test_pretrain_steps_prune_after_n_dense_steps_and_restart_from_init(tmp_path):
    rc, out = run(tmp_path, "init", "hooks=[{name: prune, method: magnitude, density: 0.3, pretrain_steps: 5, "
                                    "restart_from: init}]")
    assert rc == 0
    f = load_masks(out)
    assert f.meta["prune_step"] == 5 and f.meta["restart_from"] == "init"
    name = "layer1.0.conv1.weight"
    assert not torch.equal(f.weights[name], f.init[name])  # 5 dense steps moved the weights ...
    flat = torch.cat([w.abs().flatten() for w in f.weights.values()])
    kept_all = torch.cat([(w.abs() * m).flatten() for w, m in zip(f.weights.values(), f.masks.values())])
    assert float(kept_all[kept_all > 0].min()) >= float(torch.kthvalue(flat, flat.numel() - int(sum(
        m.sum() for m in f.masks.values())) + 1).values) - 1e-7


class FakeLoader(SimpleNamespace):
    def __len__(self):
        return 10


def fake_ctx(tmp_path, model):
    return SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                           loader=FakeLoader(images=torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8),
                                             labels=torch.arange(40) % 4),
                           normalizer=lambda x: x.float() / 255, x_test=torch.zeros(1, 3, 8, 8),
                           cfg=SimpleNamespace(seed=0, train=SimpleNamespace(epochs=1, max_steps=None)),
                           out=tmp_path, log=lambda record: None, epoch=0)


def test_restart_from_init_rewinds_every_weight_and_statistic_and_drops_momentum(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, width=0.0625)
    c = fake_ctx(tmp_path, model)
    hook = build_hook("prune", {"method": "snip", "density": 0.1, "pretrain_steps": 2, "restart_from": "init"})
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    hook.on_fit_start(c)
    for step in (1, 2):
        loss = F.cross_entropy(model(torch.randn(8, 3, 8, 8)).logits["main"], torch.arange(8) % 4)
        c.optimizer.zero_grad()
        loss.backward()
        c.optimizer.step()
        hook.after_step(c, step)
    assert hook.pruned and len(c.optimizer.state) == 0
    masks = load_masks(tmp_path).masks
    for k, v in model.state_dict().items():
        expected = theta0[k] * masks[k] if k in masks else theta0[k]
        assert torch.equal(v, expected), k


def test_resume_keeps_the_mask_and_replays_pruning_exactly(tmp_path, monkeypatch):
    hook = "hooks=[{name: prune, method: snip, density: 0.2, pretrain_steps: 6, restart_from: init}]"
    rc, whole = run(tmp_path, "whole", hook)
    assert rc == 0
    real = ckpt.save_training_state

    def crash_after_epoch_1(folder, *, epoch, **kw):  # pruning happens at step 6, in epoch 2
        real(folder, epoch=epoch, **kw)
        if epoch == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(ckpt, "save_training_state", crash_after_epoch_1)
    with pytest.raises(RuntimeError):
        run(tmp_path, "cut", hook)
    monkeypatch.setattr(ckpt, "save_training_state", real)
    assert main(["train", *tiny("train.epochs=3", "optim.momentum=0.9", "optim.weight_decay=0.01"), hook,
                 "--out", str(tmp_path / "cut"), "--resume"]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(load_masks(whole).masks.values(),
                                                 load_masks(tmp_path / "cut").masks.values()))


def test_a_mask_file_is_applied_as_given(tmp_path):
    model = create_model("resnet18", num_classes=4, width=0.0625)
    weights = prunable(model)
    masks = {n: torch.rand(w.shape, generator=gen(1)) < 0.5 for n, w in weights.items()}
    save_masks(tmp_path / "given.safetensors", MaskFile(masks, meta={"method": "hand"}))
    rc, out = run(tmp_path, "file", f"hooks=[{{name: prune, mask_file: {tmp_path / 'given.safetensors'}}}]")
    assert rc == 0
    assert all(torch.equal(load_masks(out).masks[n], m) for n, m in masks.items())


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------------
@pytest.mark.parametrize("hook, words", [
    ("{name: prune, density: 0}", ["density", "(0, 1]"]),
    ("{name: prune, density: 1.5}", ["density", "(0, 1]"]),
    ("{name: prune, method: lottery}", ["lottery", "snip"]),
    ("{name: prune, pretrain_steps: 12}", ["pretrain_steps=12", "12 steps"]),
    ("{name: prune, scope: blocks}", ["scope", "erk"]),
    ("{name: prune, method: erk, scope: global}", ["erk", "scope"]),
    ("{name: prune, head: fr}", ["head", "main"]),
])
def test_bad_prune_settings_are_one_line_exit_2(tmp_path, capsys, hook, words):
    out = tmp_path / "bad"
    rc = main(["train", *tiny("train.epochs=3"), f"hooks=[{hook}]", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not (out / "model.safetensors").exists() and not (out / "masks.safetensors").exists()


def test_a_mask_file_of_another_model_is_one_line_exit_2(tmp_path, capsys):
    other = prunable(create_model("resnet18", num_classes=4, width=0.125))
    save_masks(tmp_path / "other.safetensors", MaskFile({n: torch.ones(w.shape, dtype=torch.bool)
                                                        for n, w in other.items()}))
    rc = main(["train", *tiny(), f"hooks=[{{name: prune, mask_file: {tmp_path / 'other.safetensors'}}}]",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "does not fit this model" in err and "conv1.weight" in err


def test_population_keeps_the_mask_of_largest_full_spectrum_distance(tmp_path):
    from r18lab.pruning.masks import mask_distance

    rc, out = run(tmp_path, "pags", "hooks=[{name: prune, method: snip, density: 0.3, population: 4, "
                                    "samples_per_class: 2, distance_min_kept: 0}]")
    assert rc == 0
    f = load_masks(out)
    distances = f.meta["population_distance"]
    assert len(distances) == 4 and len(set(distances)) > 1  # the draws of scoring images give other masks
    assert mask_distance(f.masks, f.weights, 0) == pytest.approx(max(distances))


def test_population_with_a_deterministic_score_is_refused():
    from r18lab.errors import ConfigError

    with pytest.raises(ConfigError, match="same mask every time"):
        build_hook("prune", {"method": "synflow", "population": 3})
