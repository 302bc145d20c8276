"""The decorrelation objective (paper 004 Eq. 4; spec 004 §A.8, §C): hand example, the one-head zero, the
gradient's direction and size, the registered objective and its one-line refusal of a single head."""
import json

import pytest
import torch
import torch.nn.functional as F

from r18lab.cli import main
from r18lab.errors import ConfigError
from r18lab.objectives.base import Batch, ObjectiveContext, build_objectives
from r18lab.objectives.decorrelation import decorrelation_loss

TINY = ["data.source=synthetic", "data.options={num_classes: 4, image_size: 8, n: 128}", "model.width=0.0625",
        "train.batch_size=32", "train.epochs=2", "train.progress=none", "optim.lr=0.05", "schedule.name=constant"]


def hand_logits(requires_grad: bool = False) -> list[torch.Tensor]:
    return [torch.tensor([[0.0, 0.0]], requires_grad=requires_grad),
            torch.tensor([[2.0, 0.0]], requires_grad=requires_grad)]


def test_hand_example_of_spec_c():
    assert decorrelation_loss(hand_logits(), -0.8).item() == pytest.approx(-0.077421, abs=1e-6)
    # unweighted: the per-head terms KL/2 = 0.055472 and 0.041304 (mean over B·K = 2 elements)
    z1, z2 = hand_logits()
    assert decorrelation_loss([z1, z2], 1.0).item() == pytest.approx(0.055472 + 0.041304, abs=1e-6)


def test_matches_the_reference_expression():
    torch.manual_seed(0)
    logits = [torch.randn(6, 5) for _ in range(4)]
    mean = sum(z.detach() for z in logits) / 4
    ref = sum((F.softmax(mean, 1) * (F.log_softmax(mean, 1) - F.log_softmax(z, 1))).mean() for z in logits) * -0.8
    assert decorrelation_loss(logits, -0.8).item() == pytest.approx(ref.item(), rel=1e-6)


def test_weight_scales_the_term_linearly():
    base = decorrelation_loss(hand_logits(), -0.8).item()
    assert decorrelation_loss(hand_logits(), -0.4).item() == pytest.approx(base / 2, rel=1e-6)
    assert decorrelation_loss(hand_logits(), 0.8).item() == pytest.approx(-base, rel=1e-6)
    assert decorrelation_loss(hand_logits(), 0.0).item() == 0.0


def test_one_head_is_exactly_zero_with_exactly_zero_gradient():
    z = torch.randn(8, 10, requires_grad=True)
    loss = decorrelation_loss([z], -0.8)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.equal(grad, torch.zeros_like(z))


def test_gradient_is_lambda_times_p_minus_mean_and_pushes_heads_apart():
    torch.manual_seed(1)
    logits = [torch.randn(3, 4, requires_grad=True) for _ in range(3)]
    loss = decorrelation_loss(logits, -0.8)
    grads = torch.autograd.grad(loss, logits)
    p_bar = F.softmax(sum(z.detach() for z in logits) / 3, 1)
    for z, g in zip(logits, grads):  # the mean is detached: d/dz_h = λ·(p_h − p̄)/(B·K)
        assert torch.allclose(g, -0.8 * (F.softmax(z.detach(), 1) - p_bar) / 12, atol=1e-7)
    # a descent step with λ < 0 moves each head away from the (fixed) mean; with λ > 0 towards it
    for weight, farther in ((-0.8, True), (0.8, False)):
        before = [(p_bar * (p_bar.log() - F.log_softmax(z.detach(), 1))).sum() for z in logits]
        step = torch.autograd.grad(decorrelation_loss(logits, weight), logits)
        after = [(p_bar * (p_bar.log() - F.log_softmax(z.detach() - 0.5 * g, 1))).sum() for z, g in zip(logits, step)]
        assert all((a > b) == farther for a, b in zip(after, before))


# -- the registered objective ------------------------------------------------------------------------------------
def ctx(logit_names: list[str], heads: list[str]) -> ObjectiveContext:
    return ObjectiveContext(heads, 10, torch.device("cpu"), logit_names=logit_names)


class Out:
    def __init__(self, logits):
        self.logits = logits


def test_objective_uses_the_sub_heads_and_default_weight():
    (obj,) = build_objectives(["decorrelation"], ctx(["main", "ga", "ga.0", "ga.1"], ["main", "ga"]))
    assert obj.terms == ["decorrelation/ga"] and obj.weight == -0.8 and obj.keys == ["ga.0", "ga.1"]
    z1, z2 = hand_logits()
    out = Out({"main": torch.zeros(1, 2), "ga": z1 + z2, "ga.0": z1, "ga.1": z2})
    assert obj(out, Batch(None, None))["decorrelation/ga"].item() == pytest.approx(-0.077421, abs=1e-6)
    (half,) = build_objectives([{"name": "decorrelation", "weight": -0.4}], ctx(["ga", "ga.0", "ga.1"], ["ga"]))
    assert half(out, Batch(None, None))["decorrelation/ga"].item() == pytest.approx(-0.077421 / 2, abs=1e-6)


def test_objective_needs_a_head_with_several_sub_heads():
    with pytest.raises(ConfigError, match="identically zero; set ga_count ≥ 2"):
        build_objectives(["decorrelation"], ctx(["ga", "ga.0"], ["ga"]))
    with pytest.raises(ConfigError, match="heads=\\[ga\\]"):
        build_objectives(["decorrelation"], ctx(["main"], ["main"]))
    with pytest.raises(ConfigError, match="set head="):
        build_objectives(["decorrelation"], ctx(["ga", "ga.0", "ga.1", "multi_fc", "multi_fc.0", "multi_fc.1"],
                                                ["ga", "multi_fc"]))
    (picked,) = build_objectives([{"name": "decorrelation", "head": "multi_fc"}],
                                 ctx(["ga", "ga.0", "ga.1", "multi_fc", "multi_fc.0", "multi_fc.1"], ["ga", "multi_fc"]))
    assert picked.keys == ["multi_fc.0", "multi_fc.1"]


def test_single_gramian_head_is_one_line_exit_2(tmp_path, capsys):
    argv = ["train", *TINY, "model.heads=[ga]", "model.options={ga_count: 1, ga_dim: 15}",
            "objective=[ce, decorrelation]", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "ga_count ≥ 2" in err[0]


def test_trains_end_to_end_and_logs_every_head(tmp_path):
    argv = ["train", *TINY, "model.heads=[ga]", "model.options={ga_count: 2, ga_dim: 15}",
            "objective=[ce, decorrelation]", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["train/decorrelation/ga"] <= 0  # λ < 0 times a KL ≥ 0
    assert last["train/loss"] == pytest.approx(last["train/ce/ga"] + last["train/decorrelation/ga"], rel=1e-4)
    assert {"eval/ga/acc", "eval/ga.0/acc", "eval/ga.1/acc"} <= set(last)
