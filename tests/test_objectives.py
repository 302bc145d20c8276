"""Distillation losses against values computed by hand (plain-Python softmax/KL) on 2 samples × 3 classes."""
import pytest
import torch

from r18lab.objectives.base import Batch, ObjectiveContext, build_objective
from r18lab.objectives.distill import dml_losses, kd_loss, kdcl_losses
from r18lab.errors import ConfigError

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
T = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, -0.5]])
Y = torch.tensor([1, 2])


def test_kd_loss_matches_hand_value():
    assert kd_loss(S, T, 4.0).item() == pytest.approx(0.5747814032481549, rel=1e-5)


def test_dml_each_peer_learns_from_the_other():
    a, b = dml_losses([S, T])
    assert a.item() == pytest.approx(0.5447325847210593, rel=1e-5)
    assert b.item() == pytest.approx(0.5527536857511136, rel=1e-5)


def test_kdcl_target_is_mean_of_peer_logits():
    a, b = kdcl_losses([S, T], temperature=2.0)
    assert a.item() == pytest.approx(0.147065418375944, rel=1e-5)
    assert b.item() == pytest.approx(0.14446368973260623, rel=1e-5)


def test_dml_gradient_reaches_only_the_student_side():
    s, t = S.clone().requires_grad_(), T.clone().requires_grad_()
    dml_losses([s, t])[0].backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_ce_objective_sums_every_head():
    class Out:
        logits = {"main": S, "fr": S}
    ctx = ObjectiveContext(["main", "fr"], 3, torch.device("cpu"))
    terms = build_objective("ce", {}, ctx)(Out, Batch(S, Y))
    assert set(terms) == {"ce/main", "ce/fr"}
    assert terms["ce/main"].item() == pytest.approx(0.4359873742761625, rel=1e-5)


def test_objective_errors_name_the_problem():
    ctx = ObjectiveContext(["main"], 3, torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown parameter 'tau' for objective 'kd'"):
        build_objective("kd", {"tau": 2}, ctx)
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_objective("kd", {}, ctx)
    with pytest.raises(ConfigError, match="at least two peers"):
        build_objective("dml", {}, ctx)
    with pytest.raises(ConfigError, match="unknown objective 'kl'"):
        build_objective("kl", {}, ctx)
