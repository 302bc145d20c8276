"""The `kd` objective's `reduction` (batchmean | elementwise_mean, spec 003 §8.2) and `until_epoch` (KD during the
first N epochs only, spec 003 T5): hand-computed values on a 2-sample, 3-class case, Moonshine's loss reproduced
exactly, the teacher not run once KD is off, and the bad inputs as one-line CLI errors."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from r18lab.cli import main
from r18lab.config import load_config
from r18lab.errors import ConfigError
from r18lab.models.io import LoadedModel, Preprocessing
from r18lab.objectives.base import Batch, ObjectiveContext, build_objective, build_objectives
from r18lab.objectives.distill import (KnowledgeDistillation, kd_loss, kd_loss_elementwise_mean,
                                       moonshine_kd_loss)
from r18lab.train.engine import Trainer, train

from helpers import tiny

CPU = torch.device("cpu")
S = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]  # student logits, 2 samples × 3 classes
TL = [[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]]  # teacher logits
Y = [0, 1]
C = 3
# T²·mean_i Σ_k p_t,ik·log(p_t,ik / p_s,ik), written out once with math.exp/math.log (see `hand_batchmean`)
BATCHMEAN = {1.0: 0.1160970059977901, 2.0: 0.14252646723864626}


def softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def hand_batchmean(s, t, temp):
    """T²·(1/N)·Σ_i Σ_k p_t,ik·(log p_t,ik − log p_s,ik), term by term."""
    total = 0.0
    for si, ti in zip(s, t):
        pt, ps = softmax(ti, temp), softmax(si, temp)
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    return temp ** 2 * total / len(s)


def hand_elementwise_mean(s, t, temp):
    """T²·(1/(N·C))·Σ_i Σ_k p_t,ik·(log p_t,ik − log p_s,ik): the mean over all N·C elements."""
    elems = []
    for si, ti in zip(s, t):
        pt, ps = softmax(ti, temp), softmax(si, temp)
        elems += [a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps)]
    return temp ** 2 * sum(elems) / len(elems)


# -- a stub teacher whose logits are its (re-normalised) input, so the hand case controls them ----------------
PRE = Preprocessing.of([0.0], [1.0], (1, 1, C), ["a", "b", "c"])


class EchoTeacher(nn.Module):
    """logits = x.flatten(1): what the teacher sees is what it outputs."""

    head_names = ["main"]
    num_classes = C

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return SimpleNamespace(logits={"main": x.flatten(1) * self.scale})


def context():
    teacher = LoadedModel(EchoTeacher(), {"name": "stub", "num_classes": C}, PRE, "id-t", Path("t.safetensors"))
    return ObjectiveContext(["main"], C, CPU, load_checkpoint=lambda p: teacher, preprocessing=PRE)


def kd_of(**params):
    return build_objective("kd", {"teacher": "t.safetensors", "weight": 1.0, **params}, context())


def batch(epoch=None):
    return Batch(torch.tensor(TL).view(-1, 1, 1, C), torch.tensor(Y), epoch=epoch)


def out():
    return SimpleNamespace(logits={"main": torch.tensor(S)})


def count_teacher_calls(kd: KnowledgeDistillation) -> list:
    calls = []
    kd.teacher.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls


# -- the maths ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_hand_values_of_both_reductions(temp):
    assert hand_batchmean(S, TL, temp) == pytest.approx(BATCHMEAN[temp], rel=1e-12)
    assert hand_elementwise_mean(S, TL, temp) == pytest.approx(BATCHMEAN[temp] / C, rel=1e-12)
    s, t = torch.tensor(S, dtype=torch.float64), torch.tensor(TL, dtype=torch.float64)
    assert kd_loss(s, t, temp).item() == pytest.approx(BATCHMEAN[temp], rel=1e-6)
    assert kd_loss_elementwise_mean(s, t, temp).item() == pytest.approx(BATCHMEAN[temp] / C, rel=1e-6)
    # the old `kl_div` default ("elementwise_mean", today's "mean") is the mean over every element
    old = temp ** 2 * F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="none").mean()
    assert kd_loss_elementwise_mean(s, t, temp).item() == pytest.approx(old.item(), rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0])
@pytest.mark.parametrize("weight", [0.5, 1.8])
def test_objective_term_for_each_reduction(temp, weight):
    bm = kd_of(temperature=temp, weight=weight)(out(), batch())["kd"].item()
    em = kd_of(temperature=temp, weight=weight, reduction="elementwise_mean")(out(), batch())["kd"].item()
    assert bm == pytest.approx(weight * BATCHMEAN[temp], rel=1e-5)
    assert em == pytest.approx(weight * BATCHMEAN[temp] / C, rel=1e-5)
    assert em == pytest.approx(bm / C, rel=1e-6)
    assert abs(em - bm) > 0.05 * bm  # the option is not ignored


def test_default_reduction_is_batchmean():
    kd = build_objective("kd", {"teacher": "t.safetensors"}, context())
    assert (kd.reduction, kd.until_epoch, kd.weight, kd.temperature) == ("batchmean", None, 0.9, 4.0)
    assert kd(out(), batch())["kd"].item() == pytest.approx(0.9 * hand_batchmean(S, TL, 4.0), rel=1e-5)


def test_moonshine_loss_is_ce_1_minus_alpha_plus_kd_2alpha_elementwise_mean():
    alpha, temp = 0.9, 4.0
    objs = build_objectives([{"name": "ce", "weight": 1 - alpha},
                             {"name": "kd", "teacher": "t.safetensors", "weight": 2 * alpha,
                              "reduction": "elementwise_mean", "temperature": temp}], context())
    ours = sum(v for o in objs for v in o(out(), batch()).values())
    s, t, y = torch.tensor(S), torch.tensor(TL), torch.tensor(Y)
    # Moonshine / attention-transfer `distillation(y, teacher_scores, labels, T, alpha)` with the old kl_div
    # default reduction (the mean over every element), in float64
    s, t = s.double(), t.double()
    theirs = (F.kl_div(F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1), reduction="none").mean()
              * (temp * temp * 2.0 * alpha) + F.cross_entropy(s, y) * (1.0 - alpha))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)  # the objectives compute in float32
    assert moonshine_kd_loss(s, t, y, temp, alpha).item() == pytest.approx(theirs.item(), rel=1e-5)


def test_gradient_flows_through_elementwise_mean():
    s = torch.tensor(S, requires_grad=True)
    kd_of(reduction="elementwise_mean")(SimpleNamespace(logits={"main": s}), batch())["kd"].backward()
    assert s.grad.abs().sum() > 0


# -- until_epoch -------------------------------------------------------------------------------------------------
def test_until_epoch_applies_kd_before_and_skips_the_teacher_after():
    kd = kd_of(temperature=2.0, until_epoch=2)
    calls = count_teacher_calls(kd)
    for epoch in (0, 1):
        assert kd(out(), batch(epoch))["kd"].item() == pytest.approx(BATCHMEAN[2.0], rel=1e-5)
    assert len(calls) == 2
    for epoch in (2, 3, 10):
        terms = kd(out(), batch(epoch))
        assert set(terms) == {"kd"} and terms["kd"].item() == 0.0
    assert len(calls) == 2  # the teacher was not run once KD is off


def test_without_until_epoch_kd_applies_every_epoch_and_tags_still_apply():
    kd = kd_of(temperature=2.0)
    assert kd(out(), batch(500))["kd"].item() == pytest.approx(BATCHMEAN[2.0], rel=1e-5)
    tagged = build_objective("kd", {"teacher": "t.safetensors", "until_epoch": 1, "tag": "t2"}, context())
    assert set(tagged(out(), batch(3))) == {"kd:t2"}


def test_until_epoch_without_an_epoch_is_refused():
    with pytest.raises(ConfigError, match="from_epoch/until_epoch need the batch's epoch"):
        kd_of(until_epoch=1)(out(), batch(None))


def test_engine_hands_the_epoch_and_the_teacher_runs_only_in_kd_epochs(tmp_path, monkeypatch):
    train(load_config(None, tiny("train.epochs=1")), tmp_path / "teacher")
    teacher = tmp_path / "teacher" / "model.safetensors"
    calls = []
    original = KnowledgeDistillation.teacher_logits

    def counted(self, x):
        calls.append(1)
        return original(self, x)

    monkeypatch.setattr(KnowledgeDistillation, "teacher_logits", counted)
    cfg = load_config(None, tiny("train.epochs=3",
                                 f"objective=[ce, {{name: kd, teacher: {teacher}, until_epoch: 1}}]"))
    assert Trainer(cfg, tmp_path / "student").fit()["status"] == "done"
    recs = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert recs[0]["train/kd"] > 0
    assert recs[1]["train/kd"] == 0.0 and recs[2]["train/kd"] == 0.0  # still logged, exactly zero
    for r in recs:
        assert r["train/loss"] == pytest.approx(r["train/ce/main"] + r["train/kd"], rel=1e-4)
    assert len(calls) == recs[0]["step"]  # one teacher forward per step of epoch 1, none after


# -- bad inputs through the CLI: exit 2, one line ---------------------------------------------------------------
def run_main(argv, capsys):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


@pytest.fixture
def teacher(tmp_path):
    train(load_config(None, tiny("train.epochs=1")), tmp_path / "teacher")
    return tmp_path / "teacher" / "model.safetensors"


@pytest.mark.parametrize("entry, words", [
    ("reduction: sum", ("unknown reduction 'sum'", "batchmean, elementwise_mean")),
    ("until_epoch: 0", ("until_epoch must be an integer ≥ 1", "got 0")),
    ("until_epoch: 2.5", ("until_epoch must be an integer ≥ 1", "got 2.5")),
    ("until_epoch: soon", ("until_epoch must be an integer ≥ 1",)),
], ids=["reduction", "until-epoch-0", "until-epoch-float", "until-epoch-text"])
def test_bad_kd_options_are_one_line_config_errors(teacher, tmp_path, capsys, entry, words):
    rc, err = run_main(["train", *tiny(f"objective=[ce, {{name: kd, teacher: {teacher}, {entry}}}]"),
                        "--out", tmp_path / "s"], capsys)
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: objective kd: "), err
    for w in words:
        assert w in lines[0], lines[0]


def test_teacher_with_other_class_count_is_a_one_line_config_error(teacher, tmp_path, capsys):
    rc, err = run_main(["train", *tiny("data.options={num_classes: 3, image_size: 8, n: 96}",
                                       f"objective=[ce, {{name: kd, teacher: {teacher}}}]"),
                        "--out", tmp_path / "s"], capsys)
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "teacher has 4 classes" in lines[0] and "this data has 3" in lines[0] and "set teacher=" in lines[0]


def test_epoch_windows_are_generic_and_switch_ce_to_full_weight_after_kd(tmp_path):
    """Any objective takes from_epoch/until_epoch: T5's [ce·0.1 until 2, kd until 2, ce·1 from 2] gives the mix in
    epochs 0–1 and plain CE from epoch 2 (a window outside [from, until) yields zeros, nothing computed)."""
    from r18lab.objectives.base import build_objectives
    early, late = build_objectives([{"name": "ce", "weight": 0.1, "until_epoch": 2},
                                    {"name": "ce", "tag": "late", "from_epoch": 2}], context())
    z, y = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2])
    o = SimpleNamespace(logits={"main": z}, features=torch.zeros(2, 4))
    full = torch.nn.functional.cross_entropy(z, y)
    at = {e: {**early(o, Batch(z, y, epoch=e)), **late(o, Batch(z, y, epoch=e))} for e in (0, 1, 2, 5)}
    assert all(set(t) == {"ce/main", "ce:late/main"} for t in at.values())
    for e in (0, 1):
        assert torch.allclose(at[e]["ce/main"], 0.1 * full) and at[e]["ce:late/main"].item() == 0.0
    for e in (2, 5):
        assert at[e]["ce/main"].item() == 0.0 and torch.allclose(at[e]["ce:late/main"], full)
    with pytest.raises(ConfigError, match="from_epoch 3 ≥ until_epoch 3 leaves no epoch"):
        build_objectives([{"name": "ce", "from_epoch": 3, "until_epoch": 3}], context())
    with pytest.raises(ConfigError, match="from_epoch must be an integer ≥ 0"):
        build_objectives([{"name": "ce", "from_epoch": -1}], context())
