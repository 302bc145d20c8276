"""Checkpoint files: atomic writes survive an interrupted write; optimizer state round-trips without pickle."""
import json

import pytest
import torch
from safetensors.torch import load_file

import r18lab
from r18lab.config import load_config
from r18lab.errors import R18Error
from r18lab.train import checkpoint as ckpt
from r18lab.train.engine import train
from r18lab.train.optim import build_optimizer
from r18lab.config import OptimConfig

from helpers import tiny


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    ckpt.atomic_save_tensors({"w": torch.ones(3)}, target)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    import r18lab.models.io as model_io
    monkeypatch.setattr(model_io, "save_file", crash)
    with pytest.raises(R18Error, match="No space left on device"):  # one line for the user, not a traceback
        ckpt.atomic_save_tensors({"w": torch.zeros(3)}, target)
    assert torch.equal(load_file(target)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind


def test_interrupted_text_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    ckpt.atomic_write_text(target, '{"epoch": 1}')
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write_text(target, '{"epoch": 2}')
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_optimizer_state_round_trip():
    model = r18lab.create_model("resnet18", num_classes=3, width=0.0625)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3))
    model(torch.randn(2, 3, 8, 8)).logits["main"].sum().backward()
    opt.step()
    opt.param_groups[3]["lr_scale"] = 1.25
    tensors, info = ckpt.optimizer_state(opt)
    json.dumps(info)  # JSON-able, no pickle
    fresh = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3))
    ckpt.restore_optimizer(fresh, tensors, json.loads(json.dumps(info)))
    assert fresh.param_groups[3]["lr_scale"] == 1.25
    a, b = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


def test_engine_options_combine(tmp_path):
    """AdamW, no decay on norms/biases, label smoothing, clipping, channels-last, bf16 autocast, warm-up."""
    cfg = load_config(None, tiny("optim.name=adamw", "optim.lr=0.003", "optim.no_decay_norm_bias=true",
                                 "train.label_smoothing=0.1", "train.grad_clip=1.0", "train.channels_last=true",
                                 "train.amp=true", "schedule.name=cosine", "schedule.warmup_epochs=1"))
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "done" and 0 <= summary["final"]["eval/main/acc"] <= 100
