"""Distillation end to end through the engine: offline KD from a frozen teacher, DML and KDCL between peers."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from r18lab.config import load_config
from r18lab.errors import ConfigError
from r18lab.objectives.distill import KnowledgeDistillation
from r18lab.train.engine import Trainer, train

from helpers import tiny

KD = "objective=[ce, {name: kd, temperature: 4, weight: 0.9}]"


def kd_with(teacher, *more: str) -> str:
    """The teacher as the kd entry's own parameter (the legacy top-level `teacher=` is moved there by the config)."""
    return f"objective=[ce, {{name: kd, teacher: {teacher}, temperature: 4, weight: 0.9}}{''.join(more)}]"


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kd_student_learns_from_a_frozen_teacher(tmp_path):
    # a teacher of another architecture (double width): the student rebuilds it from its weights' metadata
    train(load_config(None, tiny("model.width=0.125")), tmp_path / "teacher")
    teacher_path = tmp_path / "teacher" / "model.safetensors"
    before = load_file(str(teacher_path))

    trainer = Trainer(load_config(None, tiny(kd_with(teacher_path))), tmp_path / "student")
    summary = trainer.fit()
    assert summary["status"] == "done" and "eval/main/acc" in summary["final"]
    recs = records(tmp_path / "student")
    assert len(recs) == 2
    for r in recs:
        assert r["train/kd"] > 0 and math.isfinite(r["train/kd"]) and r["train/ce/main"] > 0
        assert r["train/loss"] == pytest.approx(r["train/ce/main"] + r["train/kd"], rel=1e-4)

    kd = next(o for o in trainer.objectives if isinstance(o, KnowledgeDistillation))
    assert (kd.temperature, kd.weight) == (4, 0.9)
    assert not kd.teacher.training and not any(p.requires_grad for p in kd.teacher.parameters())
    assert kd.teacher.fc.weight.shape[1] == 2 * trainer.model.fc.weight.shape[1]
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in kd.teacher.parameters()}  # the teacher is nowhere in the optimizer
    after = load_file(str(teacher_path))
    live = kd.teacher.state_dict()  # parameters and BN running statistics, after the student's training
    assert before.keys() == after.keys() == live.keys()
    for k in before:
        assert torch.equal(before[k], after[k]) and torch.equal(before[k], live[k].cpu()), k


def test_two_teachers_each_fed_its_own_preprocessing_log_tagged_terms(tmp_path):
    # teacher b is trained without normalisation, the student with the data's mean/std: each sees its own input
    train(load_config(None, tiny()), tmp_path / "a")
    train(load_config(None, tiny("data.normalize=none")), tmp_path / "b")
    a, b = (tmp_path / t / "model.safetensors" for t in "ab")
    trainer = Trainer(load_config(None, tiny(kd_with(a, f", {{name: kd, teacher: {b}, temperature: 2, weight: 0.5, "
                                                      "tag: t2}"))), tmp_path / "student")
    assert trainer.fit()["status"] == "done"
    for r in records(tmp_path / "student"):
        assert r["train/kd"] > 0 and r["train/kd:t2"] > 0
        assert r["train/loss"] == pytest.approx(r["train/ce/main"] + r["train/kd"] + r["train/kd:t2"], rel=1e-4)
    kds = [o for o in trainer.objectives if isinstance(o, KnowledgeDistillation)]
    assert [(k.terms, k.temperature, k.weight) for k in kds] == [(["kd"], 4, 0.9), (["kd:t2"], 2, 0.5)]
    assert kds[0].teacher_preprocessing.std != kds[1].teacher_preprocessing.std == (1.0, 1.0, 1.0)


def test_two_teachers_without_tags_are_refused_naming_tag(tmp_path):
    train(load_config(None, tiny("train.epochs=1")), tmp_path / "t")
    t = tmp_path / "t" / "model.safetensors"
    with pytest.raises(ConfigError, match=r"both log the term 'kd'; give #3 a distinct tag"):
        train(load_config(None, tiny(kd_with(t, f", {{name: kd, teacher: {t}}}"))), tmp_path / "s")


def test_kd_without_a_teacher_names_teacher(tmp_path):
    with pytest.raises(ConfigError, match=r"objective kd needs a teacher: set teacher=PATH/model.safetensors"):
        train(load_config(None, tiny("objective=[ce, kd]")), tmp_path / "s")


def test_kd_teacher_of_other_classes_is_a_config_error(tmp_path):
    train(load_config(None, tiny("data.options={num_classes: 3, image_size: 8, n: 96}", "train.epochs=1")),
          tmp_path / "t3")
    with pytest.raises(ConfigError, match=r"teacher has 3 classes but this data has 4"):
        train(load_config(None, tiny(KD, f"teacher={tmp_path / 't3' / 'model.safetensors'}")), tmp_path / "s")


@pytest.mark.parametrize("name", ["dml", "kdcl"])
def test_peer_objectives_train_both_peers(tmp_path, name):
    summary = train(load_config(None, tiny("model.peers=2", f"objective=[ce, {name}]")), tmp_path / name)
    final = summary["final"]
    for head in ("main", "peer1/main"):
        assert 0 <= final[f"eval/{head}/acc"] <= 100
    recs = records(tmp_path / name)
    for r in recs:
        terms = ["train/ce/main", "train/ce/peer1/main", f"train/{name}/main", f"train/{name}/peer1/main"]
        for t in terms:
            assert math.isfinite(r[t]) and r[t] >= 0, t
        # peers start from different weights, so their mutual KL is positive from the first step
        assert r[f"train/{name}/main"] > 0 and r[f"train/{name}/peer1/main"] > 0
        assert r["train/loss"] == pytest.approx(sum(r[t] for t in terms), rel=1e-4)


@pytest.mark.parametrize("name", ["dml", "kdcl"])
def test_peer_objectives_need_two_peers(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"objective {name} needs at least two peers: set model.peers=2"):
        train(load_config(None, tiny(f"objective=[ce, {name}]")), tmp_path / "s")
