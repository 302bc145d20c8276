"""Every objective's `weight`, `temperature` and CE's `label_smoothing`, each checked on the logged term against a
two-class case computed by hand with math.exp/math.log; the `kd` and `kd-hinton` methods' CE/KD mixes; teachers as
objective parameters (own preprocessing, frozen, several per run with tags) and their build-time errors."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from r18lab.config import load_config, specs
from r18lab.errors import CheckpointError, ConfigError
from r18lab.models import create_model
from r18lab.models.io import LoadedModel, Preprocessing, save_model
from r18lab.objectives.base import Batch, Objective, ObjectiveContext, build_objective, build_objectives, tag_term
from r18lab.objectives.distill import KnowledgeDistillation, hinton_kd_loss
from r18lab.protocols.methods import METHODS

CPU = torch.device("cpu")
S = [[1.0, -1.0], [0.5, 0.0]]  # student logits, 2 samples × 2 classes
TL = [[2.0, 0.0], [-1.0, 1.0]]  # teacher logits
Y = [0, 1]


# -- plain-Python references ---------------------------------------------------------------------------------
def softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def hand_kd(s, t, temp):
    """T²·mean_i KL(softmax(t_i/T) ‖ softmax(s_i/T))."""
    return temp ** 2 * sum(kl(softmax(ti, temp), softmax(si, temp)) for si, ti in zip(s, t)) / len(s)


def hand_ce(s, y, eps=0.0):
    """mean_i (1 − ε)·(−log p_y) + ε·mean_k(−log p_k)."""
    out = 0.0
    for zi, yi in zip(s, y):
        p = softmax(zi)
        out += (1 - eps) * -math.log(p[yi]) + eps * sum(-math.log(pk) for pk in p) / len(p)
    return out / len(s)


def test_two_class_reference_is_the_closed_form():
    # softmax of [a, b] is (σ(a − b), σ(b − a)); KL for one sample written out term by term
    pt, ps = 1 / (1 + math.exp(-(2.0 - 0.0) / 4)), 1 / (1 + math.exp(-(1.0 + 1.0) / 4))
    by_hand = pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
    assert hand_kd([S[0]], [TL[0]], 4.0) == pytest.approx(16 * by_hand, rel=1e-12)


# -- a stub teacher whose logits are its (re-normalised) input, so the hand case controls them ----------------
STUDENT_PRE = Preprocessing.of([0.5], [0.25], (1, 1, 2), ["a", "b"])
TEACHER_PRE = Preprocessing.of([0.0], [1.0], (1, 1, 2), ["a", "b"])


class EchoTeacher(nn.Module):
    """logits[head] = scale_head · x.flatten(1): what the teacher sees is what it outputs."""

    def __init__(self, heads=("main",), scales=(1.0,)):
        super().__init__()
        self.head_names = list(heads)
        self.num_classes = 2
        self.scale = nn.Parameter(torch.tensor(list(scales)))

    def forward(self, x):
        self.seen = x
        return SimpleNamespace(logits={h: x.flatten(1) * self.scale[i] for i, h in enumerate(self.head_names)})


def loaded(model=None, pre=TEACHER_PRE, classes=2, path="t.safetensors"):
    return LoadedModel(model if model is not None else EchoTeacher(), {"name": "stub", "num_classes": classes},
                       pre, "id-" + path, Path(path))


def context(teachers=None, heads=("main",), k=2, pre=STUDENT_PRE, smoothing=0.0):
    teachers = teachers or {"t.safetensors": loaded()}
    return ObjectiveContext(list(heads), k, CPU, smoothing, load_checkpoint=lambda p: teachers[p], preprocessing=pre)


def student_view(raw, pre=STUDENT_PRE):
    """The batch as the engine hands it: raw values normalised with the student's preprocessing."""
    return (torch.tensor(raw).view(-1, 1, 1, 2) - pre.mean[0]) / pre.std[0]


def out_of(**logits):
    return SimpleNamespace(logits={k: torch.tensor(v) for k, v in logits.items()})


def batch(raw=TL):
    return Batch(student_view(raw), torch.tensor(Y))


# -- kd --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("weight", [0.25, 1.0])
def test_kd_term_is_weight_times_T2_KL(temperature, weight):
    kd = build_objective("kd", {"teacher": "t.safetensors", "temperature": temperature, "weight": weight}, context())
    terms = kd(out_of(main=S), batch())
    assert set(terms) == {"kd"}
    assert terms["kd"].item() == pytest.approx(weight * hand_kd(S, TL, temperature), rel=1e-5)


def test_kd_defaults_are_weight_09_and_T4():
    kd = build_objective("kd", {"teacher": "t.safetensors"}, context())
    assert (kd.temperature, kd.weight) == (4.0, 0.9)
    assert kd(out_of(main=S), batch())["kd"].item() == pytest.approx(0.9 * hand_kd(S, TL, 4.0), rel=1e-5)


def test_teacher_is_fed_with_its_own_preprocessing():
    kd = build_objective("kd", {"teacher": "t.safetensors", "temperature": 2.0, "weight": 1.0}, context())
    kd(out_of(main=S), batch())
    # the batch was normalised with mean 0.5 / std 0.25; the teacher (mean 0 / std 1) sees the raw values again
    assert torch.allclose(kd.teacher.seen.flatten(1), torch.tensor(TL), atol=1e-6)
    assert not torch.allclose(batch().x.flatten(1), torch.tensor(TL))


def test_kd_head_and_teacher_head_pick_the_logits():
    teacher = EchoTeacher(heads=("main", "aux"), scales=(1.0, -1.0))
    ctx = context({"t.safetensors": loaded(teacher)}, heads=("main", "fr"))
    kd = build_objective("kd", {"teacher": "t.safetensors", "head": "fr", "teacher_head": "aux",
                                "temperature": 2.0, "weight": 1.0}, ctx)
    neg = [[-v for v in row] for row in TL]
    assert kd(out_of(main=TL, fr=S), batch())["kd"].item() == pytest.approx(hand_kd(S, neg, 2.0), rel=1e-5)


def test_teacher_is_frozen_in_eval_mode_and_not_a_module():
    kd = build_objective("kd", {"teacher": "t.safetensors"}, context())
    assert not isinstance(kd, nn.Module)  # nothing of it can reach an optimizer built from module parameters
    assert not kd.teacher.training and not any(p.requires_grad for p in kd.teacher.parameters())
    kd.teacher.train()  # even if someone switches it back, the next step runs it in eval mode
    s = torch.tensor(S, requires_grad=True)
    kd(SimpleNamespace(logits={"main": s}), batch())["kd"].backward()
    assert not kd.teacher.training and kd.teacher.scale.grad is None and s.grad.abs().sum() > 0


def test_kd_from_a_real_checkpoint_with_the_library_loader(tmp_path):
    model = create_model("resnet18", num_classes=3, width=0.0625)
    pre = Preprocessing.of([0.4, 0.5, 0.6], [0.2, 0.25, 0.3], (3, 8, 8), ["x", "y", "z"])
    save_model(model, tmp_path / "t.safetensors", {"name": "resnet18", "num_classes": 3, "width": 0.0625},
               preprocessing=pre)
    student_pre = Preprocessing.of([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], (3, 8, 8), ["x", "y", "z"])
    ctx = ObjectiveContext(["main"], 3, CPU, preprocessing=student_pre)  # no load_checkpoint: io's loader
    kd = build_objective("kd", {"teacher": str(tmp_path / "t.safetensors"), "temperature": 2.0, "weight": 0.5}, ctx)
    assert not kd.teacher.training and not any(p.requires_grad for p in kd.teacher.parameters())
    raw = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = (raw - 0.5) / 0.5
    s = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        t = model((raw - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
    expected = 0.5 * hand_kd(s.tolist(), t.logits["main"].tolist(), 2.0)
    assert kd(SimpleNamespace(logits={"main": s}), Batch(x, torch.zeros(4, dtype=torch.long)))["kd"].item() \
        == pytest.approx(expected, rel=1e-4)


# -- ce --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_ce_term_is_weight_times_smoothed_ce(eps, weight):
    ce = build_objective("ce", {"weight": weight, "label_smoothing": eps}, context())
    assert ce(out_of(main=S), batch())["ce/main"].item() == pytest.approx(weight * hand_ce(S, Y, eps), rel=1e-5)


def test_ce_label_smoothing_defaults_to_the_runs():
    ce = build_objective("ce", {}, context(smoothing=0.2))
    assert ce(out_of(main=S), batch())["ce/main"].item() == pytest.approx(hand_ce(S, Y, 0.2), rel=1e-5)
    with pytest.raises(ConfigError, match=r"label_smoothing must lie in \[0, 1\]"):
        build_objective("ce", {"label_smoothing": 1.5}, context())


# -- dml, kdcl -------------------------------------------------------------------------------------------------
PEERS = ("main", "peer1/main")


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_dml_term_is_weight_times_KL_at_T1(weight):
    dml = build_objective("dml", {"weight": weight}, context(heads=PEERS))
    terms = dml(out_of(**{"main": S, "peer1/main": TL}), batch())
    assert terms["dml/main"].item() == pytest.approx(weight * hand_kd(S, TL, 1.0), rel=1e-5)
    assert terms["dml/peer1/main"].item() == pytest.approx(weight * hand_kd(TL, S, 1.0), rel=1e-5)


def test_dml_has_no_temperature():
    with pytest.raises(ConfigError, match="unknown parameter 'temperature' for objective 'dml'"):
        build_objective("dml", {"temperature": 2.0}, context(heads=PEERS))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_kdcl_term_is_weight_times_T2_KL_to_the_mean_logits(temperature, weight):
    kdcl = build_objective("kdcl", {"weight": weight, "temperature": temperature}, context(heads=PEERS))
    terms = kdcl(out_of(**{"main": S, "peer1/main": TL}), batch())
    mean = [[(a + b) / 2 for a, b in zip(r, q)] for r, q in zip(S, TL)]
    assert terms["kdcl/main"].item() == pytest.approx(weight * hand_kd(S, mean, temperature), rel=1e-5)
    assert terms["kdcl/peer1/main"].item() == pytest.approx(weight * hand_kd(TL, mean, temperature), rel=1e-5)


def test_kdcl_default_temperature_is_2():
    kdcl = build_objective("kdcl", {}, context(heads=PEERS))
    mean = [[(a + b) / 2 for a, b in zip(r, q)] for r, q in zip(S, TL)]
    terms = kdcl(out_of(**{"main": S, "peer1/main": TL}), batch())
    assert terms["kdcl/main"].item() == pytest.approx(hand_kd(S, mean, 2.0), rel=1e-5)


# -- the kd methods' CE/KD mixes ---------------------------------------------------------------------------------
def method_loss(method: str) -> float:
    """Total loss of a method's objective list (teacher moved in as the config does) on the hand case."""
    cfg = load_config(None, [f"objective={METHODS[method]['objective']}".replace("'", ""), "teacher=t.safetensors"])
    objs = build_objectives(specs(cfg.objective, "objective"), context())
    return sum(v.item() for o in objs for v in o(out_of(main=S), batch()).values())


def test_kd_method_is_ce_plus_09_T2_KL_at_T4():
    assert METHODS["kd"]["teacher_method"] == "resnet50"
    assert method_loss("kd") == pytest.approx(hand_ce(S, Y) + 0.9 * hand_kd(S, TL, 4.0), rel=1e-5)


def test_kd_hinton_method_is_one_minus_alpha_ce_plus_alpha_T2_KL():
    alpha, temp = 0.9, 4.0
    assert METHODS["kd-hinton"]["teacher_method"] == "resnet50"
    expected = (1 - alpha) * hand_ce(S, Y) + alpha * hand_kd(S, TL, temp)
    assert method_loss("kd-hinton") == pytest.approx(expected, rel=1e-5)
    assert hinton_kd_loss(torch.tensor(S), torch.tensor(TL), torch.tensor(Y), temp, alpha).item() \
        == pytest.approx(expected, rel=1e-5)


# -- tags and several teachers -----------------------------------------------------------------------------------
def test_two_teachers_each_with_its_own_preprocessing_and_a_tag():
    pre_b = Preprocessing.of([0.25], [2.0], (1, 1, 2), ["a", "b"])
    teachers = {"a.safetensors": loaded(path="a.safetensors"),
                "b.safetensors": loaded(EchoTeacher(scales=(-1.0,)), pre_b, path="b.safetensors")}
    objs = build_objectives(["ce", {"name": "kd", "teacher": "a.safetensors", "temperature": 2.0, "weight": 1.0},
                             {"name": "kd", "teacher": "b.safetensors", "temperature": 3.0, "weight": 0.5,
                              "tag": "t2"}], context(teachers))
    assert [o.terms for o in objs] == [["ce/main"], ["kd"], ["kd:t2"]]
    terms = {k: v for o in objs for k, v in o(out_of(main=S), batch()).items()}
    # teacher b sees the raw values re-normalised with ITS mean/std, then negates them
    raw = torch.tensor(TL)
    t_b = (-(raw - 0.25) / 2.0).tolist()
    assert terms["kd"].item() == pytest.approx(hand_kd(S, TL, 2.0), rel=1e-5)
    assert terms["kd:t2"].item() == pytest.approx(0.5 * hand_kd(S, t_b, 3.0), rel=1e-5)
    assert terms["ce/main"].item() == pytest.approx(hand_ce(S, Y), rel=1e-5)


def test_two_entries_logging_the_same_term_are_refused_naming_tag():
    teachers = {"a": loaded(path="a"), "b": loaded(path="b")}
    with pytest.raises(ConfigError, match=r"#2 \(kd\) and #3 \(kd\) both log the term 'kd'; give #3 a distinct tag"):
        build_objectives(["ce", {"name": "kd", "teacher": "a"}, {"name": "kd", "teacher": "b"}], context(teachers))
    with pytest.raises(ConfigError, match="both log the term 'ce/main'"):
        build_objectives(["ce", ("ce", {"weight": 0.5})], context())


def test_tag_renames_every_objectives_terms():
    assert (tag_term("kd", "t2"), tag_term("ce/main", "x"), tag_term("dml/peer1/main", "b")) == \
        ("kd:t2", "ce:x/main", "dml:b/peer1/main")
    objs = build_objectives(["ce", {"name": "ce", "tag": "s", "label_smoothing": 0.1},
                             "dml", {"name": "dml", "tag": "w2", "weight": 2.0}], context(heads=PEERS))
    terms = {k: v for o in objs for k, v in o(out_of(**{"main": S, "peer1/main": TL}), batch()).items()}
    assert set(terms) == {"ce/main", "ce/peer1/main", "ce:s/main", "ce:s/peer1/main",
                          "dml/main", "dml/peer1/main", "dml:w2/main", "dml:w2/peer1/main"}
    assert terms["ce:s/main"].item() == pytest.approx(hand_ce(S, Y, 0.1), rel=1e-5)
    assert terms["dml:w2/main"].item() == pytest.approx(2 * terms["dml/main"].item(), rel=1e-6)
    with pytest.raises(ConfigError, match="tag must be a short name"):
        build_objective("ce", {"tag": "a/b"}, context())


def test_every_objective_logs_exactly_its_declared_terms():
    objs = build_objectives(["ce", {"name": "kd", "teacher": "t.safetensors"}, "dml", "kdcl"], context(heads=PEERS))
    for o in objs:
        assert list(o(out_of(**{"main": S, "peer1/main": TL}), batch())) == o.terms
    # an objective written as a plain callable (the pre-tag API) still works, and its terms are tagged
    legacy = type("Legacy", (Objective,), {"__call__": lambda self, out, batch: {"x": out.logits["main"].sum()}})()
    legacy.tag = "t"
    assert list(legacy(out_of(**{"main": S, "peer1/main": TL}), batch())) == ["x:t"]
    with pytest.raises(TypeError, match="implement compute"):
        type("Both", (Objective,), {"__call__": lambda self, o, b: {}, "compute": lambda self, o, b: {}})


# -- build-time errors for teachers ----------------------------------------------------------------------------
@pytest.mark.parametrize("teacher, params, error, match", [
    (None, {"teacher": ["a", "b"]}, ConfigError, r"kd takes one teacher path.*one kd entry each with distinct tags"),
    (loaded(pre=None), {}, CheckpointError, r"carries no preprocessing .*re-train the teacher"),
    (loaded(pre=Preprocessing.of([0.0] * 3, [1.0] * 3, (3, 1, 2), ["a", "b"])), {}, ConfigError,
     r"takes 3-channel RGB images but the student gets 1-channel L"),
    (loaded(pre=Preprocessing.of([0.0], [1.0], (1, 2, 2), ["a", "b"])), {}, ConfigError,
     r"trained on 2×2 images but the student gets 1×2; set data.image_size=2"),
    (loaded(classes=3), {}, ConfigError, r"the teacher has 3 classes but this data has 2"),
    (loaded(pre=Preprocessing.of([0.0], [1.0], (1, 1, 2), ["b", "a"])), {}, ConfigError,
     r"teacher's classes \['b', 'a'\] differ from this data's \['a', 'b'\]"),
    (None, {"teacher_head": "fr"}, ConfigError, r"the teacher has no head 'fr'; set teacher_head to one of \['main'\]"),
    (None, {"temperature": 0}, ConfigError, r"kd: temperature must be > 0"),
    (None, {"head": "fr"}, ConfigError, r"kd: unknown head 'fr'"),
])
def test_teacher_problems_are_one_line_build_errors(teacher, params, error, match):
    ctx = context({"t.safetensors": teacher or loaded()})
    with pytest.raises(error, match=match) as e:
        build_objective("kd", {"teacher": "t.safetensors", **params}, ctx)
    assert "\n" not in str(e.value)


def test_missing_teacher_and_missing_student_preprocessing():
    with pytest.raises(ConfigError, match=r"needs a teacher: .*objective=\[ce, \{name: kd, teacher: PATH\}\]"):
        build_objective("kd", {}, context())
    with pytest.raises(ConfigError, match="student's preprocessing is unknown"):
        build_objective("kd", {"teacher": "t.safetensors"}, context(pre=None))
