"""The training engine: schedules, parameter groups, learning, resume, divergence."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import r18lab
from r18lab.config import ScheduleConfig, load_config
from r18lab.errors import TrainingDiverged
from r18lab.objectives.base import Objective
from r18lab.registry import HOOKS, OBJECTIVES
from r18lab.train.engine import train
from r18lab.train.hooks import Hook
from r18lab.train.optim import lr_factor, param_groups

from helpers import interrupt_at, tiny


def test_schedules_on_hand_values():
    cos = ScheduleConfig(name="cosine")
    assert lr_factor(cos, 0, 10) == 1.0 and lr_factor(cos, 5, 10) == pytest.approx(0.5)
    assert lr_factor(cos, 10, 10) == pytest.approx(0.0, abs=1e-12)
    warm = ScheduleConfig(name="cosine", warmup_epochs=2)
    assert lr_factor(warm, 1, 10) == pytest.approx(0.5, rel=1e-6)
    assert lr_factor(warm, 6, 10) == pytest.approx(0.5)
    ms = ScheduleConfig(name="multistep", milestones=[160], gamma=0.1)
    assert lr_factor(ms, 159.9, 200) == 1.0 and lr_factor(ms, 160, 200) == pytest.approx(0.1)


def test_param_groups_one_per_layer_with_its_norm():
    m = r18lab.create_model("resnet18", num_classes=10, width=0.125)
    groups = param_groups(m, 5e-4, no_decay_norm_bias=False)
    by_layer = {g["layer"]: g for g in groups}
    assert len(groups) == 21  # 20 convs (incl. 3 downsample) + fc
    assert {id(p) for p in by_layer["conv1"]["params"]} == {id(m.conv1.weight), id(m.bn1.weight), id(m.bn1.bias)}
    ds = by_layer["layer2.0.downsample.0"]["params"]
    assert {id(p) for p in ds} == {id(p) for p in m.layer2[0].downsample.parameters()}
    split = param_groups(m, 5e-4, no_decay_norm_bias=True)
    assert all(g["weight_decay"] == 0.0 for g in split if all(p.ndim == 1 for p in g["params"]))
    assert sum(len(g["params"]) for g in split) == len(list(m.parameters()))


def test_training_learns_synthetic_data(tmp_path):
    cfg = load_config(None, tiny("train.epochs=6", "data.options={num_classes: 4, image_size: 8, n: 256}"))
    summary = train(cfg, tmp_path / "run")
    assert summary["final"]["eval/main/acc"] > 60.0  # chance is 25 %
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 7))
    assert records[-1]["train/loss"] < records[0]["train/loss"]


_interrupt_at = interrupt_at


def test_resume_after_kill_gives_identical_weights(tmp_path, monkeypatch):
    args = tiny("train.epochs=3", "train.deterministic=true", "schedule.name=cosine")
    train(load_config(None, args), tmp_path / "full")
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 2
        _interrupt_at(m, 6)
        train(load_config(None, args), tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["epoch"] == 1
    train(load_config(None, args), tmp_path / "cut", resume=True)  # the same config: a resume may not change it
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _NanAt(Objective):
    def __init__(self, ctx, step: int = 5) -> None:
        self.step, self.calls = step, 0

    def __call__(self, out, batch):
        self.calls += 1
        return {"nan": out.logits["main"].sum() * (math.nan if self.calls == self.step else 0.0)}


OBJECTIVES.register("test_nan")(_NanAt)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = load_config(None, tiny("train.epochs=3", "objective=[ce, {name: test_nan, step: 6}]"))
    with pytest.raises(TrainingDiverged, match=r"at step 6 \(epoch 2\)"):
        train(cfg, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1
    weights = load_file(tmp_path / "run" / "checkpoint" / f"{state['tag']}.model.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
