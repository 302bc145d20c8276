"""Representation consolidation (paper 001, spec 001): the loss, the objective, named heads with their own classes,
init_from, lr groups by name, class-subset / label-map tasks, and the protocol end to end on tiny synthetic data."""
import json
import math

import numpy as np
import pytest
import torch

from helpers import tiny
from r18lab.cli import main
from r18lab.config import load_config, run_identity
from r18lab.errors import CheckpointError, ConfigError
from r18lab.models.classifier import create_model
from r18lab.models.io import load_checkpoint
from r18lab.objectives.consolidate import consolidation_loss, distillation_cross_entropy
from r18lab.train.engine import Trainer, train

GROUPS = "{a: [class0, class1], b: [class2], c: [class3]}"
COARSE = f"data.task={{name: group, groups: {GROUPS}}}"


def test_distillation_cross_entropy_hand_computed():
    """−Σ softmax(z_t/T)·log softmax(z_s/T), mean over 2 samples, T = 2 (spec 001 §3.1 item 3)."""
    zs = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    zt = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])

    def softmax(v):
        e = [math.exp(x / 2) for x in v]
        return [x / sum(e) for x in e]
    expected = 0.0
    for s, t in zip(zs.tolist(), zt.tolist()):
        ps, pt = softmax(s), softmax(t)
        expected += -sum(a * math.log(b) for a, b in zip(pt, ps))
    expected /= 2
    assert distillation_cross_entropy(zs, zt, 2.0).item() == pytest.approx(expected, abs=1e-6)
    # N = 2 weighted sum (λ_0 = 1, λ_1 = 0.5) and T matters
    two = consolidation_loss({"gen": zs, "t1": zt}, {"gen": zt, "t1": zs}, {"gen": 1.0, "t1": 0.5}, 2.0)
    assert two.item() == pytest.approx(distillation_cross_entropy(zs, zt, 2.0).item()
                                       + 0.5 * distillation_cross_entropy(zt, zs, 2.0).item(), abs=1e-6)
    assert distillation_cross_entropy(zs, zt, 1.0).item() != pytest.approx(expected, abs=1e-3)


def test_zero_gradient_at_the_teacher():
    z = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.5, 0.0]], requires_grad=True)
    distillation_cross_entropy(z, z.detach().clone(), 2.0).backward()
    assert z.grad.abs().max().item() < 1e-7


def test_named_linear_heads_parameter_counts():
    """torchvision ResNet-50 backbone 23,508,032 + 2049·C per head (spec 001 §3.1 item 4: iFood t-split 125 classes)."""
    m = create_model("resnet50", num_classes=1000, stem="imagenet",
                     heads=[{"name": "gen", "type": "main", "classes": 1000}, {"name": "t1", "type": "main",
                                                                                "classes": 125}])
    assert sum(p.numel() for p in m.parameters()) == 25_813_157
    r18 = create_model("resnet18", num_classes=1000, stem="imagenet")
    assert sum(p.numel() for p in r18.parameters()) == 11_689_512
    out = m(torch.zeros(1, 3, 64, 64))
    assert out.logits["gen"].shape == (1, 1000) and out.logits["t1"].shape == (1, 125)
    assert m.head_classes == {"gen": 1000, "t1": 125}


@pytest.mark.parametrize("heads, message", [
    ([{"name": "main", "classes": 3}], "answers the run's classes"),
    ([{"name": "x", "type": "nope"}], "nope"),
    ([{"name": "x", "type": "main", "classes": 0}], "classes must be an integer"),
])
def test_bad_head_entries(heads, message):
    with pytest.raises(ConfigError, match=message):
        create_model("resnet18", num_classes=4, width=0.0625, heads=heads)


def _gen_and_teacher(tmp_path):
    gen = tmp_path / "gen"
    train(load_config(None, tiny("train.epochs=1", COARSE)), gen)
    from r18lab.data.loading import load
    d = load("synthetic", split="train", num_classes=4, image_size=8, n=128)
    rows = np.flatnonzero(np.isin(d.labels, [1, 2]))[:24]
    (tmp_path / "teach.json").write_text(json.dumps(rows.tolist()))
    teacher = tmp_path / "t"
    s = train(load_config(None, tiny("train.epochs=1", "data.task={name: select, classes: [class1, class2]}",
                                     f"data.indices={tmp_path / 'teach.json'}",
                                     f"model.init_from={gen / 'model.safetensors'}",
                                     "optim.lr_groups={heads: 0.5}")), teacher)
    return gen / "model.safetensors", teacher / "model.safetensors", rows, s


def _student_overrides(gen, teacher, *extra):
    return tiny("train.epochs=1", COARSE,
                "model.heads=[{name: gen, type: main, classes: 3}, {name: t1, type: main, classes: 2}]",
                f"model.init_from={{checkpoint: {gen}, heads: {{gen: main}}}}",
                f"objective=[{{name: consolidate, teachers: [{{checkpoint: {gen}, head: gen, generalist: true}}, "
                f"{{checkpoint: {teacher}, head: t1}}]}}]", *extra)


def test_teacher_from_generalist_and_index_files_in_source_rows(tmp_path):
    gen, teacher, rows, summary = _gen_and_teacher(tmp_path)
    assert summary["num_classes"] == 2 and summary["num_train"] == 24
    saved = json.loads((tmp_path / "t" / "splits.json").read_text())["train"]
    assert saved == sorted(rows.tolist())  # splits.json keeps rows of the source's split
    # the teacher's backbone started from the generalist: with lr_groups the heads moved 10x faster, but a row
    # of another class in the index file is refused
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([0, int(rows[0])]))  # row 0 is class0 or class3 in synthetic data?
    from r18lab.data.loading import load
    d = load("synthetic", split="train", num_classes=4, image_size=8, n=128)
    other = int(np.flatnonzero(d.labels == 0)[0])
    bad.write_text(json.dumps([other, int(rows[0])]))
    with pytest.raises(ConfigError, match="leaves out"):
        train(load_config(None, tiny("train.epochs=1", "data.task={name: select, classes: [class1, class2]}",
                                     f"data.indices={bad}")), tmp_path / "bad")


def test_student_starts_as_the_generalist_and_logs_each_term(tmp_path):
    gen, teacher, _, _ = _gen_and_teacher(tmp_path)
    cfg = load_config(None, _student_overrides(gen, teacher, "optim.lr_groups={heads: 0.5}"))
    tr = Trainer(cfg, tmp_path / "s0")
    tr.claim()
    from r18lab.data.training import prepare
    tr.data = prepare(cfg, tr.out, tr.device)
    tr._normalizer = tr.preprocessing.normalizer()
    tr._setup_model()
    g = load_checkpoint(gen).model.eval()
    tr.model.eval()
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(tr.model(x).logits["gen"], g(x).logits["main"], atol=1e-6)
    obj = tr.objectives[0]
    assert obj.weights == {"gen": 1.0, "t1": 1.0}  # N = 1: λ_0 = 1, λ_1 = 1/N = 1
    # heads at 0.5, backbone at optim.lr
    scales = {g["layer"]: g["base_scale"] for g in tr.optimizer.param_groups}
    assert scales["heads.gen.fc"] == pytest.approx(10.0) and scales["conv1"] == 1.0
    tr.release()
    s = train(cfg, tmp_path / "s")
    rec = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()][-1]
    for k in ("train/consolidate/gen", "train/consolidate/t1", "train/info/kl/gen", "train/info/agree/t1"):
        assert k in rec
    # info/ terms are logged, not optimised
    assert rec["train/loss"] == pytest.approx(rec["train/consolidate/gen"] + rec["train/consolidate/t1"], rel=1e-5)
    # the gen head answers the run's 3 coarse classes: evaluated; t1 (2 classes) is not
    assert "eval/gen/acc" in s["final"] and not any("t1" in k for k in s["final"])
    # the teachers enter the identity by their own identity
    other = load_config(None, _student_overrides(gen, teacher))
    assert run_identity(cfg, {}) != run_identity(other, {})


def test_task_weights_readings(tmp_path):
    gen, teacher, _, _ = _gen_and_teacher(tmp_path)
    from r18lab.objectives.base import ObjectiveContext, build_objective
    from r18lab.models.io import preprocessing_of
    ctx = ObjectiveContext(["gen", "t1", "t2"], 3, torch.device("cpu"), preprocessing=preprocessing_of(gen),
                           head_classes={"gen": 3, "t1": 2, "t2": 2})
    entries = [{"checkpoint": str(gen), "head": "gen", "generalist": True},
               {"checkpoint": str(teacher), "head": "t1"}, {"checkpoint": str(teacher), "head": "t2"}]
    assert build_objective("consolidate", {"teachers": entries}, ctx).weights == {"gen": 1.0, "t1": 0.5, "t2": 0.5}
    one = build_objective("consolidate", {"teachers": entries, "task_weights": "one"}, ctx)
    assert one.weights == {"gen": 1.0, "t1": 1.0, "t2": 1.0}
    explicit = [{**entries[0], "weight": 3.0}, entries[1]]
    assert build_objective("consolidate", {"teachers": explicit}, ctx).weights == {"gen": 3.0, "t1": 1.0}
    with pytest.raises(ConfigError, match="has 2 classes but the student's head 'gen' has 3"):
        build_objective("consolidate", {"teachers": [{"checkpoint": str(teacher), "head": "gen"}]}, ctx)
    with pytest.raises(ConfigError, match="student lacks"):
        build_objective("consolidate", {"teachers": [{"checkpoint": str(teacher), "head": "t9"}]}, ctx)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_objective("consolidate", {"teachers": [{"checkpoint": str(tmp_path / "no.safetensors"),
                                                      "head": "t1"}]}, ctx)


def test_init_from_refuses_another_architecture(tmp_path):
    gen, _, _, _ = _gen_and_teacher(tmp_path)
    with pytest.raises(CheckpointError, match="does not fit"):
        train(load_config(None, tiny(COARSE, "model.width=0.125", f"model.init_from={gen}")), tmp_path / "w")
    with pytest.raises(ConfigError, match="cannot take 'main'"):
        train(load_config(None, tiny(COARSE, "model.heads=[{name: gen, type: main, classes: 5}]",
                                     f"model.init_from={{checkpoint: {gen}, heads: {{gen: main}}}}")), tmp_path / "h")


def test_lr_groups_patterns(tmp_path):
    from r18lab.train.optim import param_groups, set_learning_rates
    m = create_model("resnet18", num_classes=4, width=0.0625, heads=["main", {"name": "t1", "type": "main",
                                                                               "classes": 2}])
    groups = param_groups(m, 5e-4, False, {"layer4.*": 0.2, "heads": 1.0}, 0.1)
    opt = torch.optim.SGD(groups, lr=0.1)
    set_learning_rates(opt, 0.1, 0.5)
    lr = {g["layer"]: g["lr"] for g in opt.param_groups}
    assert lr["fc"] == pytest.approx(0.5) and lr["heads.t1.fc"] == pytest.approx(0.5)
    assert lr["layer4.0.conv1"] == pytest.approx(0.1) and lr["conv1"] == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        param_groups(m, 5e-4, False, {"layer9.*": 0.2}, 0.1)
    with pytest.raises(ConfigError, match="lr_groups"):
        load_config(None, ["optim.lr_groups={heads: 0}"])


def test_select_and_group_tasks():
    from r18lab.data.dataset import Dataset
    from r18lab.data.tasks import apply_task
    imgs = np.zeros((6, 2, 2, 3), np.uint8)
    ds = Dataset(imgs, np.array([0, 1, 2, 3, 2, 1]), ["a", "b", "c", "d"])
    t = apply_task({"name": "select", "classes": ["c", "b"]}, ds, ds)
    assert t.train.labels.tolist() == [1, 0, 0, 1] and t.train.classes == ["c", "b"]
    assert t.train_source.tolist() == [1, 2, 4, 5]
    g = apply_task({"name": "group", "groups": {"x": ["a", "d"], "y": ["b", "c"]}}, ds, ds)
    assert g.train.labels.tolist() == [0, 1, 1, 0, 1, 1] and g.train_source is None
    with pytest.raises(ConfigError, match="in two groups"):
        apply_task({"name": "group", "groups": {"x": ["a"], "y": ["a"]}}, ds, ds)
    with pytest.raises(ConfigError, match="not a class"):
        apply_task({"name": "select", "classes": ["zebra"]}, ds, ds)


def test_class_pools_disjoint_and_seeded():
    from r18lab.protocols.consolidate import class_pools
    labels = np.repeat(np.arange(4), 20)
    names = ["a", "b", "c", "d"]
    sizes = {"gen": 5, "teach": 5, "down": 5}
    wanted = {"gen": names, "teach": ["b"], "down": ["c", "d"]}
    p = class_pools(labels, names, sizes, wanted, 0)
    assert len(p["gen"]) == 20 and len(p["teach"]) == 5 and len(p["down"]) == 10
    assert not (set(p["gen"]) & set(p["teach"])) and not (set(p["gen"]) & set(p["down"]))
    assert all(labels[p["teach"]] == 1)
    assert p["gen"].tolist() == class_pools(labels, names, sizes, wanted, 0)["gen"].tolist()
    assert p["gen"].tolist() != class_pools(labels, names, sizes, wanted, 1)["gen"].tolist()
    with pytest.raises(ConfigError, match="fewer than"):
        class_pools(labels, names, {"gen": 16, "teach": 5, "down": 5}, wanted, 0)


RECIPE = """
protocol:
  seeds: [0, 1]
  generalist_groups: {v0: [class0], v1: [class1], anim: [class2, class3, class4, class5]}
  teachers: {t1: {classes: [class2, class3]}}
  related: [class4, class5]
  unrelated: [class0, class1]
  pools: {gen: 12, teach: 12, down: 12}
  students: {TD: {generalist: false}, RC: {}, SL: {task_teachers: false, seeds: [0]}}
  generalist: {train: {epochs: 2}}
  teacher: {optim: {lr: 0.01, lr_groups: {heads: 0.1}}, train: {epochs: 2}}
  student: {optim: {lr: 0.01, lr_groups: {heads: 0.1}}, train: {epochs: 1}}
  probes: {shots: 2, episodes: 3, folds: 2}
  bootstrap: 200
data: {source: synthetic, options: {num_classes: 6, image_size: 8, n: 300}}
model: {width: 0.0625}
train: {batch_size: 16, progress: none}
optim: {lr: 0.05}
"""


def test_protocol_end_to_end_and_resumable(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "p"
    store = str(tmp_path / "s.sqlite")
    assert main(["protocol", "consolidate", str(recipe), "--out", str(out), "--store", store]) == 0
    text = capsys.readouterr().out
    assert "## Checks" in text and "K1" in text and "RC vs TD" in text
    probes = json.loads(next((out / "probes").glob("probes-*.json")).read_text())
    models = {(p["model"], p["seed"]) for p in probes["probes"]}
    assert models == {("G", None), ("T", None), ("TD", 0), ("TD", 1), ("RC", 0), ("RC", 1), ("SL", 0)}
    hashes = {(p["task"], p["episode_indices_hash"]) for p in probes["probes"] if p["kind"] == "fewshot"}
    assert len(hashes) == 2  # one set of episodes per task, shared by every model
    up = {(u["model"], u["seed"]): u for u in probes["upstream"]}
    assert up[("G", None)]["upstream"] is None and up[("G", None)]["fidelity"] is not None
    assert up[("TD", 0)]["fidelity"] is None and up[("RC", 0)]["upstream"] is not None
    assert (out / "report" / "deltas.png").is_file() and (out / "report" / "counts.csv").is_file()
    # the students started from the generalist and kept their teacher's identity
    rc = json.loads(next((out / "student").glob("RC-seed0-*/config.json")).read_text())
    assert rc["model"]["init_from"]["heads"] == {"gen": "main"}
    assert [e["head"] for e in rc["objective"][0]["teachers"]] == ["gen", "t1"]
    mtime = next((out / "probes").glob("probes-*.json")).stat().st_mtime
    assert main(["protocol", "consolidate", str(recipe), "--out", str(out), "--store", store]) == 0
    assert next((out / "probes").glob("probes-*.json")).stat().st_mtime == mtime  # nothing re-run
    # loaded generalist and teacher: only the students train, and they read the given files
    gen = next((out / "generalist").glob("G-*/model.safetensors"))
    teacher = next((out / "teacher").glob("t1-*/model.safetensors"))
    loaded = tmp_path / "loaded.yaml"
    loaded.write_text(RECIPE.replace("generalist_groups:", f"generalist_checkpoint: {gen}\n  generalist_groups:")
                      .replace("t1: {classes: [class2, class3]}", f"t1: {{classes: [class2, class3], checkpoint: {teacher}}}")
                      .replace("seeds: [0, 1]", "seeds: [0]"))
    assert main(["protocol", "consolidate", str(loaded), "--out", str(tmp_path / "q"), "--store", store]) == 0
    assert not (tmp_path / "q" / "generalist").exists() and not (tmp_path / "q" / "teacher").exists()
    td = json.loads(next((tmp_path / "q" / "student").glob("TD-seed0-*/config.json")).read_text())
    assert td["objective"][0]["teachers"][0]["checkpoint"] == str(teacher)


@pytest.mark.parametrize("edit, replacement, message", [
    ("related: [class4, class5]", "related: [class2, class5]", "also a teacher's class"),
    ("pools: {gen: 12,", "pools: {gen: 0,", "would hold no images"),
    ("unrelated: [class0, class1]", "unrelated: [class0, zebra]", "'zebra' is not in synthetic"),
    ("pools: {gen: 12, teach: 12, down: 12}", "pools: {gen: 40, teach: 12, down: 12}", "fewer than"),
])
def test_protocol_bad_settings(tmp_path, edit, replacement, message, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace(edit, replacement))
    assert main(["protocol", "consolidate", str(recipe), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_init_from_a_torchvision_pth_records_imagenet_normalisation(tmp_path):
    """A plain torchvision-layout .pth (no metadata) loads strictly into the backbone through weights_only, and the run
    records ImageNet's mean/std with its weights (issue 9: pretrained backbones from a file)."""
    src = create_model("resnet18", num_classes=7, width=0.0625)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "tv.pth")
    out = tmp_path / "ft"
    train(load_config(None, tiny("train.epochs=1", f"model.init_from={tmp_path / 'tv.pth'}")), out)
    from r18lab.models.io import preprocessing_of
    pre = preprocessing_of(out / "model.safetensors")
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.std == pytest.approx((0.229, 0.224, 0.225))
    bad = create_model("resnet18", num_classes=7, width=0.125)
    torch.save(bad.state_dict(), tmp_path / "wide.pth")
    assert main(["train", *tiny(f"model.init_from={tmp_path / 'wide.pth'}"), "--out", str(tmp_path / "w")]) != 0
    torch.save(5, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        train(load_config(None, tiny(f"model.init_from={tmp_path / 'int.pth'}")), tmp_path / "e")
    torch.save({"x": _Custom()}, tmp_path / "code.pth")  # an arbitrary object: refused by weights_only, never run
    with pytest.raises(CheckpointError, match="not a plain PyTorch state dict"):
        train(load_config(None, tiny(f"model.init_from={tmp_path / 'code.pth'}")), tmp_path / "c")


class _Custom:
    pass
