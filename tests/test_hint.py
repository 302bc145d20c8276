"""Hint (FitNets) as a head + objective, and KL* (synthetic soft labels, paper 002c §11.2)."""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from r18lab.cli import main
from r18lab.config import load_config, run_identity, teacher_paths
from r18lab.errors import ConfigError
from r18lab.models import create_model, export_state
from r18lab.models.classifier import stage_maps
from r18lab.models.hint import HintRegressor
from r18lab.models.io import load_checkpoint, preprocessing_of, teacher_identity
from r18lab.objectives.base import Batch, ObjectiveContext, build_objectives
from r18lab.objectives.hint import Hint, hint_loss, hint_loss_mean
from r18lab.objectives.synthetic import SyntheticKD, synthetic_targets

from helpers import tiny

CPU = torch.device("cpu")
TEACHER_C = 16  # layer2 of a width-0.125 ResNet-18: 128·0.125 channels (the tiny student, width 0.0625, has 8)


def hint_head(stage: int = 2, c: int = TEACHER_C) -> str:
    return f"model.heads=[main, {{name: hint, stage: {stage}, teacher_channels: {c}}}]"


def hint_objective(teacher, *extra: str) -> str:
    return f"objective=[ce, {{name: hint, teacher: {teacher}, weight: 5{''.join(extra)}}}]"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """One tiny width-0.125 teacher, trained for 1 epoch through the CLI, shared by the module."""
    root = tmp_path_factory.mktemp("hint_teacher")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R18LAB_CACHE", str(root / "cache"))
        mp.setenv("R18LAB_STORE", str(root / "store" / "index.sqlite"))
        assert main(["train", "--out", str(root / "t"), *tiny("model.width=0.125", "train.epochs=1")]) == 0
    return root / "t" / "model.safetensors"


def student_and_objective(teacher, channels: int = TEACHER_C, **params):
    """A tiny student with a hint head and the `hint` objective built against it, as the engine builds them."""
    model = create_model("resnet18", num_classes=4, width=0.0625,
                         heads=["main", {"name": "hint", "stage": 2, "teacher_channels": channels}])
    ctx = ObjectiveContext(model.head_names, 4, CPU, preprocessing=preprocessing_of(teacher),
                           logit_names=model.logit_names, aux_names=model.aux_names, head_modules=dict(model.heads))
    (obj,) = build_objectives([{"name": "hint", "teacher": str(teacher), **params}], ctx)
    return model, obj


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# -- the loss and the head ----------------------------------------------------------------------------------
def test_hint_loss_on_a_hand_example_with_identity_regressors():
    s = torch.zeros(2, 2, 2, 2)  # student map S
    t = torch.stack([torch.ones(2, 2, 2), 2 * torch.ones(2, 2, 2)])  # teacher map T: image 0 all 1, image 1 all 2
    # ½‖T − S‖² per image: ½·8·1 = 4 and ½·8·4 = 16, mean over the batch 10; MSE mean: (8 + 32)/16 = 2.5
    assert hint_loss(s, t).item() == 10.0 and hint_loss_mean(s, t).item() == 2.5
    for kind in ("conv3x3", "conv1x1_bn"):
        head = HintRegressor(8, 4, teacher_channels=2, stage=1, regressor=kind, student_channels=2).eval()
        with torch.no_grad():
            conv = head.regressor if kind == "conv3x3" else head.regressor[0]
            conv.weight.zero_()
            centre = conv.weight.shape[-1] // 2
            conv.weight[:, :, centre, centre] = torch.eye(2)
            if kind == "conv3x3":
                conv.bias.zero_()
            else:  # BN in eval mode as the identity: (x − 0)/√(var + eps)·1 + 0 with var = 1 − eps
                bn = head.regressor[1]
                bn.running_var.fill_(1 - bn.eps)
        x = torch.randn(2, 2, 2, 2)
        r = head(torch.zeros(2, 8), [x])["aux"]["features"]
        assert torch.allclose(r, x, atol=1e-6)
        assert hint_loss(head(torch.zeros(2, 8), [s])["aux"]["features"], t).item() == pytest.approx(10.0)


def test_hint_head_is_aux_only_and_absent_from_logits_and_heads_all():
    model = create_model("resnet18", num_classes=4, width=0.0625, heads=["main", {"name": "hint", "teacher_channels": 5}])
    assert model.head_names == model.logit_names == ["main"] and model.all_head_names == ["main", "hint"]
    out = model(torch.randn(3, 3, 8, 8))
    assert list(out.logits) == ["main"] and out.aux["hint.features"].shape == (3, 5, 4, 4)
    ctx = ObjectiveContext(model.head_names, 4, CPU, logit_names=model.logit_names, aux_names=model.aux_names)
    (ce,) = build_objectives([{"name": "ce", "heads": "all"}], ctx)
    assert ce.terms == ["ce/main"]
    with pytest.raises(ConfigError, match="teacher_channels"):
        create_model("resnet18", num_classes=4, width=0.0625, heads=["main", "hint"])


def test_regressor_and_backbone_get_gradients_from_the_hint_term(teacher):
    model, obj = student_and_objective(teacher)
    x = torch.randn(4, 3, 8, 8)
    terms = obj(model(x), Batch(x, torch.zeros(4, dtype=torch.long)))
    t_map = stage_maps(obj.teacher, x)[1]  # same preprocessing: no re-normalisation
    expected = 1.0 * hint_loss(model(x).aux["hint.features"], t_map)
    assert terms["hint"].item() == pytest.approx(expected.item(), rel=1e-5) and terms["hint"].item() > 0
    terms["hint"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["heads.hint.regressor.0.weight"].abs().sum() > 0
    assert grads["layer1.0.conv1.weight"].abs().sum() > 0 and grads["conv1.weight"].abs().sum() > 0
    assert grads["layer3.0.conv1.weight"] is None and grads["fc.weight"] is None  # beyond the tap: nothing
    assert isinstance(obj, Hint) and obj.teacher_identity
    assert not any(p.requires_grad for p in obj.teacher.parameters()) and not obj.teacher.training


# -- end to end ---------------------------------------------------------------------------------------------
def test_hint_trains_end_to_end_and_export_drops_the_head(tmp_path, teacher, capsys):
    out = tmp_path / "s"
    assert main(["train", "--out", str(out), *tiny(hint_head(), hint_objective(teacher), "train.epochs=1")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "eval/main/acc" in summary["final"] and not any(k.startswith("eval/hint") for k in summary["final"])
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["train/hint"] > 0 and rec["train/loss"] == pytest.approx(rec["train/ce/main"] + rec["train/hint"],
                                                                       rel=1e-4)
    assert any(k.startswith("heads.hint.") for k in load_file(str(out / "model.safetensors")))

    capsys.readouterr()
    plain = tmp_path / "plain.safetensors"
    assert main(["export", str(out / "model.safetensors"), "--keep", "main", "--out", str(plain)]) == 0
    state = load_file(str(plain))
    assert state and not any(k.startswith("heads.") for k in state)
    loaded = load_checkpoint(plain)
    assert loaded.model.all_head_names == ["main"] and loaded.spec["heads"] == ["main"]
    full = load_checkpoint(out / "model.safetensors").model
    assert export_state(full, ["main", "hint"]).keys() == full.state_dict().keys()  # an aux-only head may be kept


@pytest.mark.parametrize("model_arg, obj_extra, needle", [
    (hint_head(c=12), "", r"regresses to 12 channels but the teacher's layer2 has 16; set "
                          r"model.heads=\[main, \{name: hint, stage: 2, teacher_channels: 16\}\]"),
    (hint_head(stage=3, c=TEACHER_C), "", r"taps stage 2 but head hint taps stage 3"),
    ("model.heads=[main]", "", r"the student has no 'hint' head .*teacher_channels: 16"),
    (hint_head(), ", stage: 5", r"stage must be 1\.\.4"),
    ("model.heads=[main, hint]", "", r"head hint needs teacher_channels"),
])
def test_mismatched_or_missing_head_is_one_line_exit_2(tmp_path, teacher, capsys, model_arg, obj_extra, needle):
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "s"),
                                  *tiny(model_arg, hint_objective(teacher, obj_extra))])
    assert re.search(needle, err), err


def test_spatial_mismatch_names_both_shapes(teacher):
    # the teacher's layer3 (32 channels) is 2×2 at 8×8 input, the student's layer2 4×4
    model, obj = student_and_objective(teacher, channels=32, teacher_stage=3)
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    with pytest.raises(ConfigError, match=r"hint.features is \(2, 32, 4, 4\) but the teacher's layer3 map is "
                                          r"\(2, 32, 2, 2\)"):
        obj(out, Batch(x, torch.zeros(2, dtype=torch.long)))


def test_hint_teacher_enters_the_run_identity(tmp_path, teacher):
    t = tmp_path / "teacher.safetensors"
    shutil.copy(teacher, t)
    cfg = load_config(None, tiny(hint_head(), hint_objective(t)))
    assert teacher_paths(cfg) == [str(t)]
    before = run_identity(cfg, {str(t): teacher_identity(t)})
    assert main(["train", "--out", str(tmp_path / "other"), *tiny("model.width=0.125", "seed=1",
                                                                   "train.epochs=1")]) == 0
    shutil.copy(tmp_path / "other" / "model.safetensors", t)  # another teacher under the same path
    assert run_identity(cfg, {str(t): teacher_identity(t)}) != before
    legacy = load_config(None, tiny(hint_head(), f"teacher={t}", "objective=[ce, hint]"))
    assert legacy.objective[1] == {"name": "hint", "teacher": str(t)}


# -- KL* ----------------------------------------------------------------------------------------------------
def test_synthetic_targets_are_distributions_and_exact_without_noise():
    y = torch.tensor([0, 2, 1, 2])
    g = torch.Generator().manual_seed(0)
    p = synthetic_targets(y, 3, g)
    assert torch.allclose(p.sum(1), torch.ones(4)) and (p >= 0).all()
    assert (p.argmax(1) == y).float().mean() > 0.5  # the noise (σ = √0.2) rarely beats the margin 1
    clean = synthetic_targets(y, 3, g, variance=0.0)
    assert torch.equal(clean, torch.softmax(torch.nn.functional.one_hot(y, 3).float() / 0.15, dim=1))


def test_kd_synthetic_is_seeded_fresh_per_step_and_non_negative():
    ctx = ObjectiveContext(["main"], 5, CPU)
    a, b, c = (build_objectives([{"name": "kd_synthetic", "seed": s}], ctx)[0] for s in (3, 3, 4))
    assert isinstance(a, SyntheticKD) and (a.temperature, a.weight, a.noise_variance, a.target_temperature) == \
        (4.0, 0.9, 0.2, 0.15)
    y = torch.randint(0, 5, (16,))
    steps_a = [a.log_targets(y) for _ in range(2)]
    steps_b = [b.log_targets(y) for _ in range(2)]
    assert all(torch.equal(u, v) for u, v in zip(steps_a, steps_b))  # deterministic for a seed
    assert not torch.equal(steps_a[0], steps_a[1])  # a fresh draw every step
    assert not torch.equal(c.log_targets(y), steps_a[0])  # another seed, other noise
    class Out:
        logits = {"main": torch.randn(16, 5, requires_grad=True)}
    loss = a(Out(), Batch(torch.zeros(16, 3, 8, 8), y))["kd_synthetic"]
    assert loss.item() >= 0
    loss.backward()
    assert Out.logits["main"].grad.abs().sum() > 0


def test_kd_synthetic_trains_end_to_end(tmp_path):
    out = tmp_path / "s"
    assert main(["train", "--out", str(out), *tiny("objective=[ce, {name: kd_synthetic, seed: 1}]",
                                                    "train.epochs=1")]) == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["train/kd_synthetic"] >= 0 and "eval/main/acc" in json.loads((out / "summary.json").read_text())["final"]
