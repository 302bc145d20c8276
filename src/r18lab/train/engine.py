"""The one training loop. It names no method: heads, objectives and hooks come from registries via the config."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import objectives as _objectives  # noqa: F401  (registers objectives)
from ..config import RunConfig, config_dict, specs
from ..data import load
from ..data.augment import Augment, channel_stats
from ..data.loader import BatchLoader, to_device_tensors
from ..data.splits import nested_pools, save_split
from ..errors import ConfigError, R18Error, TrainingDiverged
from ..models import create_model
from ..objectives.base import Batch, ObjectiveContext, build_objective
from ..results.metrics import MetricsWriter
from . import checkpoint as ckpt
from . import tempbalance as _tempbalance  # noqa: F401  (registers the hook)
from .hooks import build_hook
from .optim import build_optimizer, lr_factor, set_learning_rates


def pick_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA if present, else Apple MPS, else CPU; otherwise the named device."""
    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError:
            raise ConfigError(f"invalid value for 'train.device': {name!r}; use auto, cpu, cuda or cuda:N") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_spec(cfg: RunConfig, num_classes: int) -> dict[str, Any]:
    """Everything `create_model` needs to rebuild this run's architecture (stored in the weights' metadata)."""
    m = cfg.model
    return {"name": m.name, "num_classes": num_classes, "stem": m.stem, "width": m.width,
            "heads": list(m.heads), "gate": m.gate, "peers": m.peers, **m.options}


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    spec = dict(spec)
    return create_model(spec.pop("name"), **spec)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from the architecture stored in its safetensors metadata and load its weights."""
    model = build_from_spec(ckpt.model_spec_of(Path(path)))
    ckpt.load_weights(model, Path(path))
    return model.to(device)


class Normalizer(nn.Module):
    """uint8 NCHW → float normalised, for evaluation."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer,
             batch_size: int = 512, channels_last: bool = False) -> dict[str, float]:
    """Accuracy (%) and mean CE of every head over uint8 images on the model's device."""
    was_training = model.training
    model.eval()
    correct: dict[str, float] = {}
    loss: dict[str, float] = {}
    for i in range(0, len(labels), batch_size):
        x = normalizer(images[i:i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch_size]
        for h, z in model(x).logits.items():
            correct[h] = correct.get(h, 0.0) + (z.argmax(1) == y).sum().item()
            loss[h] = loss.get(h, 0.0) + F.cross_entropy(z.float(), y, reduction="sum").item()
    model.train(was_training)
    n = max(len(labels), 1)
    out = {}
    for h in correct:
        out[f"eval/{h}/acc"] = 100.0 * correct[h] / n
        out[f"eval/{h}/loss"] = loss[h] / n
    return out


@dataclass
class Progress:
    """Progress on a terminal (bar with throughput and ETA) or plain lines (CI)."""

    mode: str
    total_steps: int
    label: str = ""
    bar: Any = None
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.mode == "auto":
            self.mode = "bar" if sys.stderr.isatty() else "lines"
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=self.total_steps, unit="step", dynamic_ncols=True, leave=False)

    def step(self, n: int, loss: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{images_per_s:.0f}")

    def epoch(self, epoch: int, epochs: int, record: dict[str, Any], done_steps: int, images_per_s: float) -> None:
        if self.mode == "none":
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done_steps, 1) * max(self.total_steps - done_steps, 0)
        accs = " ".join(f"{k.split('/')[1]} {v:.2f}%" for k, v in record.items()
                        if k.startswith("eval/") and k.endswith("/acc"))
        line = (f"{self.label + ': ' if self.label else ''}epoch {epoch + 1}/{epochs} loss {record.get('train/loss', float('nan')):.4f} {accs} "
                f"{images_per_s:.0f} img/s eta {eta:.0f}s")
        (self.bar.write if self.bar is not None else lambda s: print(s, file=sys.stderr, flush=True))(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Runs one configuration into `out_dir`: data, model, objectives, hooks, loop, checkpoints, metrics."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path, label: str = "") -> None:
        self.cfg = cfg
        self.label = label
        self.out = Path(out_dir)
        self.device = pick_device(cfg.train.device)
        self.ckpt_dir = self.out / "checkpoint"

    # -- set-up -----------------------------------------------------------------------------
    def prepare_output(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise R18Error(f"output directory {self.out} is not writable ({e.strerror}); "
                           "pass --out with a directory you can write to") from None

    def _setup_data(self) -> None:
        cfg = self.cfg.data
        opts = {**cfg.options, **({"image_size": cfg.image_size} if cfg.image_size else {})}
        train = load(cfg.source, split=cfg.train_split, **opts)
        test = load(cfg.source, split=cfg.test_split, **opts)
        if train.images.shape[1:] != test.images.shape[1:]:
            raise R18Error(f"train images {train.images.shape[1:]} and test images {test.images.shape[1:]} "
                           "differ in shape; set data.image_size")
        self.num_classes = train.num_classes
        self.classes = train.classes
        split_seed = self.cfg.seed if cfg.split_seed is None else cfg.split_seed
        if cfg.labels is not None:
            if cfg.labels > len(train):
                raise ConfigError(f"data.labels={cfg.labels} exceeds the {len(train)} training images")
            idx = np.sort(nested_pools(train.labels, [cfg.labels], seed=split_seed, balanced=cfg.balanced)[0])
        else:
            idx = np.arange(len(train))
        save_split(self.out / "splits.json", {"train": idx})
        if cfg.normalize == "dataset":
            mean, std = channel_stats(train)
        else:
            mean, std = [0.0] * train.images.shape[3], [1.0] * train.images.shape[3]
        self.normalizer = Normalizer(list(mean), list(std)).to(self.device)
        x_tr, y_tr = to_device_tensors(train.subset(idx), self.device)
        self.x_test, self.y_test = to_device_tensors(test, self.device)
        a = cfg.augment
        crop = x_tr.shape[-1] if a.crop == "auto" else a.crop
        augment = Augment(crop=crop, padding=a.padding, pad_mode=a.pad_mode, flip=a.flip, cutout=a.cutout,
                          mean=list(mean), std=list(std))
        t = self.cfg.train
        self.loader = BatchLoader(x_tr, y_tr, batch_size=min(t.batch_size, len(y_tr)), shuffle=True,
                                  drop_last=t.drop_last, seed=self.cfg.seed, augment=augment)
        self.num_train = len(y_tr)

    def _setup_model(self) -> None:
        torch.manual_seed(self.cfg.seed)
        self.spec = model_spec(self.cfg, self.num_classes)
        self.model = build_from_spec(self.spec).to(self.device)
        if self.cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        heads = self.model.head_names
        teacher_path = self.cfg.teacher

        def load_teacher() -> nn.Module:
            if teacher_path is None:
                raise ConfigError("this objective needs a teacher: set teacher=PATH/model.safetensors")
            return load_model(teacher_path, self.device)

        ctx = ObjectiveContext(heads, self.num_classes, self.device, self.cfg.train.label_smoothing,
                               load_teacher if teacher_path else None)
        self.objectives = [build_objective(n, p, ctx) for n, p in specs(self.cfg.objective, "objective")]
        self.hooks = [build_hook(n, p) for n, p in specs(self.cfg.hooks, "hook")]
        self.optimizer = build_optimizer(self.model, self.cfg.optim)

    # -- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self, epoch: int, step: int, elapsed: float) -> None:
        tag = f"epoch{epoch + 1:04d}"
        ckpt.save_model(self.model, self.ckpt_dir / f"{tag}.model.safetensors", self.spec)
        opt_tensors, opt_info = ckpt.optimizer_state(self.optimizer)
        rng = {f"rng.{k}": v for k, v in ckpt.rng_state().items()}
        ckpt.atomic_save_tensors({**{f"optim.{k}": v for k, v in opt_tensors.items()}, **rng},
                                 self.ckpt_dir / f"{tag}.state.safetensors")
        state = {"epoch": epoch + 1, "step": step, "tag": tag, "elapsed": elapsed, "optimizer": opt_info,
                 "hooks": [h.state_dict() for h in self.hooks]}
        ckpt.atomic_write_text(self.ckpt_dir / "state.json", json.dumps(state))  # the commit point
        for old in self.ckpt_dir.glob("epoch*.safetensors"):
            if not old.name.startswith(tag):
                old.unlink(missing_ok=True)

    def _restore_checkpoint(self) -> tuple[int, int, float]:
        state_path = self.ckpt_dir / "state.json"
        if not state_path.is_file():
            return 0, 0, 0.0
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError:
            raise R18Error(f"{state_path} is corrupt; delete {self.ckpt_dir} to start over") from None
        ckpt.load_weights(self.model, self.ckpt_dir / f"{state['tag']}.model.safetensors")
        tensors, _ = ckpt.read_tensors(self.ckpt_dir / f"{state['tag']}.state.safetensors")
        opt = {k[len("optim."):]: v.to(self.device) for k, v in tensors.items() if k.startswith("optim.")}
        ckpt.restore_optimizer(self.optimizer, opt, state["optimizer"])
        ckpt.restore_rng({k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")})
        for hook, hs in zip(self.hooks, state["hooks"]):
            hook.load_state_dict(hs)
        return state["epoch"], state["step"], state["elapsed"]

    # -- the loop ---------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Hooks may call this to add records to metrics.jsonl."""
        self.metrics.write(record)

    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        self.prepare_output()
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        ckpt.atomic_write_text(self.out / "config.json", json.dumps(config_dict(cfg), indent=2))
        self._setup_data()
        self._setup_model()
        start_epoch, step, elapsed = self._restore_checkpoint() if resume else (0, 0, 0.0)
        if not resume and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()
        self.metrics = MetricsWriter(self.out / "metrics.jsonl")
        total_steps = t.epochs * len(self.loader)
        total_steps = total_steps if t.max_steps is None else min(t.max_steps, total_steps)
        progress = Progress(t.progress, total_steps, self.label)
        progress.step(step, float("nan"), 0.0)  # a resumed run's bar starts where it stopped
        if start_epoch == 0:
            for h in self.hooks:
                h.on_fit_start(self)
        record: dict[str, Any] = {}
        try:
            for epoch in range(start_epoch, t.epochs):
                if step >= total_steps:
                    break
                record, step, seconds = self._run_epoch(epoch, step, total_steps, progress)
                elapsed += seconds
                record["time/train_s"] = elapsed
                if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs or step >= total_steps:
                    record.update(evaluate(self.model, self.x_test, self.y_test, self.normalizer,
                                           t.eval_batch_size, t.channels_last))
                for h in self.hooks:
                    h.on_epoch_end(self, epoch, record)
                self.metrics.write(record)
                self._save_checkpoint(epoch, step, elapsed)
                progress.epoch(epoch, t.epochs, record, step, record["train/images_per_s"])
        finally:
            progress.close()
        return self._finish(record, step, elapsed)

    def _run_epoch(self, epoch: int, step: int, total_steps: int, progress: Progress) -> tuple[dict, int, float]:
        """One pass over the loader (stopping at total_steps); returns the epoch's record, the step, seconds."""
        cfg, t = self.cfg, self.cfg.train
        self.epoch = epoch
        self.loader.set_epoch(epoch)
        for h in self.hooks:
            h.on_epoch_start(self, epoch)
        self.model.train()
        steps_per_epoch = len(self.loader)
        tic, seen, n_batches, eta = time.perf_counter(), 0, 0, cfg.optim.lr
        sums: dict[str, torch.Tensor] = {}  # summed on the device; read once per epoch
        for i, (x, y) in enumerate(self.loader):
            if step >= total_steps:
                break
            eta = set_learning_rates(self.optimizer, cfg.optim.lr,
                                     lr_factor(cfg.schedule, epoch + i / steps_per_epoch, t.epochs), cfg.schedule.min_lr)
            loss, terms = self._train_step(x, y, step, epoch)
            step, n_batches, seen = step + 1, n_batches + 1, seen + len(y)
            for k, v in {**terms, "loss": loss}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            for h in self.hooks:
                h.after_step(self, step)
            if progress.bar is not None:
                progress.step(1, loss.item(), seen / max(time.perf_counter() - tic, 1e-9))
        seconds = time.perf_counter() - tic
        record = {"epoch": epoch + 1, "step": step, "lr": eta,
                  **{f"train/{k}": float(v) / max(n_batches, 1) for k, v in sums.items()},
                  "train/images_per_s": seen / max(seconds, 1e-9)}
        return record, step, seconds

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int) -> tuple[torch.Tensor, dict]:
        """Forward, objectives, finite-loss check, backward, clip, optimizer step."""
        t = self.cfg.train
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if self.device.type in ("cpu", "cuda") else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=t.amp):
            out = self.model(x)
            batch = Batch(x, y)
            terms: dict[str, torch.Tensor] = {}
            for obj in self.objectives:
                terms.update(obj(out, batch))
        loss = torch.stack([v.float() for v in terms.values()]).sum()
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}); the last good "
                f"checkpoint is kept in {self.ckpt_dir}; lower optim.lr or set train.grad_clip")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        return loss, terms

    def _finish(self, record: dict[str, Any], step: int, elapsed: float) -> dict[str, Any]:
        ckpt.save_model(self.model, self.out / "model.safetensors", self.spec)
        if not any(k.startswith("eval/") for k in record):
            record = {**record, **evaluate(self.model, self.x_test, self.y_test, self.normalizer,
                                           self.cfg.train.eval_batch_size)}
        summary = {"status": "done", "steps": step, "train_seconds": elapsed, "num_train": self.num_train,
                   "num_classes": self.num_classes, "device": str(self.device),
                   "params": sum(p.numel() for p in self.model.parameters()),
                   "final": {k: v for k, v in record.items() if k.startswith("eval/")}}
        ckpt.atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train one configuration; returns the summary (also written to out_dir/summary.json)."""
    return Trainer(cfg, out_dir).fit(resume=resume)
