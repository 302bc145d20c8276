"""The one training loop. It names no method: heads, objectives and hooks come from registries via the config."""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import objectives as _objectives  # noqa: F401  (registers objectives)
from ..config import RunConfig, config_dict, run_identity, specs, teacher_paths
from ..data.training import TrainingData, prepare as prepare_data
from ..errors import R18Error, TrainingDiverged
from ..models.io import (Normalizer, build_from_spec, load_checkpoint,  # noqa: F401  (build_from_spec,
                         model_spec, teacher_identity)                 # model_spec: public here too)
from ..objectives.base import Batch, ObjectiveContext, build_objectives, is_monitor
from ..objectives.supervised import predicted_labels, summed_loss
from ..results.metrics import MetricsWriter, keep_epochs
from . import checkpoint as ckpt
from . import rundir
from .environment import pick_device, run_environment  # noqa: F401  (pick_device: public here too)
from .hooks import build_hook, overrides
from .optim import build_optimizer, lr_factor, set_learning_rates


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer,
             batch_size: int = 512, channels_last: bool = False) -> dict[str, float]:
    """Accuracy (%) and mean loss of every head over uint8 images on the model's device: argmax and CE, or for a
    one-logit head, z > 0 and sigmoid BCE (`predicted_labels`, `summed_loss`). Heads with their own number of
    classes (`Classifier.own_classes`, another label set than the data's) are left out."""
    was_training = model.training
    model.eval()
    foreign = {h for h, c in getattr(model, "own_classes", {}).items() if c != model.num_classes}  # another label set
    correct: dict[str, float] = {}
    loss: dict[str, float] = {}
    for i in range(0, len(labels), batch_size):
        x = normalizer(images[i:i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch_size]
        for h, z in model(x).logits.items():
            if h in foreign or h.split(".")[0] in foreign:
                continue
            correct[h] = correct.get(h, 0.0) + (predicted_labels(z) == y).sum().item()
            loss[h] = loss.get(h, 0.0) + summed_loss(z, y).item()
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

    def step(self, n: int, loss: torch.Tensor | float | None, images_per_s: float) -> None:
        """Advance the bar; `loss` (read from the device) only every 50 steps, so the bar adds no per-step sync."""
        if self.bar is not None:
            self.bar.update(n)
            if loss is not None and (self.bar.n % 50 == 0 or not torch.is_tensor(loss)):
                self.bar.set_postfix(loss=f"{float(loss):.3f}", img_s=f"{images_per_s:.0f}")

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
    """Runs one configuration into `out_dir`: the loop, and the calls into data set-up, model I/O, objectives,
    hooks and checkpoints. `claim` checks the folder (before anything is written) and locks it."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path, label: str = "") -> None:
        self.cfg = cfg
        self.label = label
        self.out = Path(out_dir)
        self.device = pick_device(cfg.train.device)
        self.ckpt_dir = self.out / rundir.CHECKPOINT_DIR
        self.state: rundir.RunState | None = None
        self._lock: rundir.RunLock | None = None
        self._overwrite = False

    # -- the run folder ---------------------------------------------------------------------
    def prepare_output(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise R18Error(f"output directory {self.out} is not writable ({e.strerror}); "
                           "pass --out with a directory you can write to") from None

    def claim(self, resume: bool = False, overwrite: bool = False) -> rundir.RunState:
        """Lock the folder and refuse (one line, nothing written) what would destroy or corrupt a run in it."""
        if self.state is not None:
            return self.state
        self.identity = run_identity(self.cfg, {p: teacher_identity(p) for p in teacher_paths(self.cfg)})
        self.prepare_output()
        self._lock = rundir.RunLock(self.out)
        self._lock.acquire()
        try:
            self.state = rundir.check_may_write(self.out, config_dict(self.cfg), resume, overwrite)
        except BaseException:
            self.release()
            raise
        self._overwrite = overwrite
        return self.state

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def finished(self) -> bool:
        """True when the claimed folder already holds this configuration's finished run (resume: nothing to do)."""
        return self.state is not None and self.state.status == "done" and not self._overwrite

    # -- set-up -----------------------------------------------------------------------------
    def _setup_model(self) -> None:
        torch.manual_seed(self.cfg.seed)
        self.spec = model_spec(self.cfg, self.num_classes)
        self.model = build_from_spec(self.spec)
        if self.cfg.model.init_from is not None:
            from ..models.pretrained import init_from_checkpoint
            init_from_checkpoint(self.model, self.cfg.model.init_from.checkpoint, self.cfg.model.init_from.heads)
        self.model = self.model.to(self.device)
        if self.cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        ctx = ObjectiveContext(self.model.head_names, self.model.num_classes, self.device, self.cfg.train.label_smoothing,
                               load_checkpoint=lambda path: load_checkpoint(path, self.device),
                               preprocessing=self.preprocessing,
                               logit_names=list(getattr(self.model, "logit_names", self.model.head_names)),
                               aux_names=list(getattr(self.model, "aux_names", [])),
                               head_modules=dict(getattr(getattr(self.model, "peers", [self.model])[0], "heads", {})),
                               head_classes=dict(getattr(self.model, "head_classes", {})))
        self.objectives = build_objectives(specs(self.cfg.objective, "objective"), ctx)
        self.hooks = [build_hook(n, p) for n, p in specs(self.cfg.hooks, "hook")]
        self._before_step = [h for h in self.hooks if overrides(h, "before_step")]
        self._after_step = [h for h in self.hooks if overrides(h, "after_step")]
        self.optimizer = build_optimizer(self.model, self.cfg.optim)

    @property
    def preprocessing(self):
        return self.data.preprocessing

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def num_train(self) -> int:
        return self.data.num_train

    @property
    def loader(self):
        return self.data.loader

    @property
    def normalizer(self) -> Normalizer:
        return self._normalizer

    @property
    def x_test(self) -> torch.Tensor:
        return self.data.x_test

    @property
    def y_test(self) -> torch.Tensor:
        return self.data.y_test

    # -- the loop ---------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Hooks may call this to add records to metrics.jsonl."""
        self.metrics.write(record)

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train (or continue) the run; a folder holding this run finished returns its summary untouched."""
        self.claim(resume, overwrite)
        try:
            if self.finished:
                return json.loads((self.out / "summary.json").read_text())
            with run_environment(self.cfg.train.threads, self.cfg.train.deterministic):
                return self._fit(resume and not self.state.empty)
        finally:
            self.release()

    def _fit(self, resume: bool) -> dict[str, Any]:
        t = self.cfg.train
        if self._overwrite:
            rundir.clear(self.out)
        rundir.clean_stale(self.out, ckpt.committed_tag(self.ckpt_dir) if resume else None)
        ckpt.atomic_write_text(self.out / "config.json", json.dumps(config_dict(self.cfg), indent=2))
        self.data: TrainingData = prepare_data(self.cfg, self.out, self.device)
        self._normalizer = self.preprocessing.normalizer().to(self.device)
        self._setup_model()
        start_epoch, step, elapsed = (ckpt.restore_training_state(self.ckpt_dir, self.model, self.optimizer,
                                                                   self.hooks, self.device)
                                      if resume else (0, 0, 0.0))
        metrics_path = self.out / "metrics.jsonl"
        if resume:
            keep_epochs(metrics_path, start_epoch)  # a kill after a metrics write but before its checkpoint
        else:
            metrics_path.unlink(missing_ok=True)
        self.metrics = MetricsWriter(metrics_path)
        total_steps = t.epochs * len(self.loader)
        total_steps = total_steps if t.max_steps is None else min(t.max_steps, total_steps)
        progress = Progress(t.progress, total_steps, self.label)
        progress.step(step, None, 0.0)  # a resumed run's bar starts where it stopped
        self._first_bad = torch.zeros((), dtype=torch.long, device=self.device)  # first non-finite step, 0 = none
        self._last_good = start_epoch if resume and start_epoch else None
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
                self._check_finite(epoch)
                if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs or step >= total_steps:
                    record.update(self.evaluate())
                    self._check_finite(epoch, record)
                for h in self.hooks:
                    h.on_epoch_end(self, epoch, record)
                self.metrics.write(record)
                ckpt.save_training_state(self.ckpt_dir, epoch=epoch + 1, step=step, elapsed=elapsed,
                                         model=self.model, model_spec=self.spec, optimizer=self.optimizer,
                                         hooks=self.hooks)
                self._last_good = epoch + 1
                progress.epoch(epoch, t.epochs, record, step, record["train/images_per_s"])
        finally:
            progress.close()
            self.metrics.close()
        return self._finish(record, step, elapsed)

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.x_test, self.y_test, self.normalizer, self.cfg.train.eval_batch_size,
                        self.cfg.train.channels_last)

    def _check_finite(self, epoch: int, record: dict[str, Any] | None = None) -> None:
        """One host read per logging point: the first non-finite loss step, non-finite weights, eval losses."""
        if record is None:
            bad_step = int(self._first_bad)
            params = [p.detach() for p in self.model.parameters()]
            finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
            if bad_step:
                what = f"the loss became NaN or infinite at step {bad_step} (epoch {epoch + 1})"
            elif not finite:
                what = f"the weights became NaN or infinite during epoch {epoch + 1}"
            else:
                return
        else:
            bad = [k for k, v in record.items() if k.startswith("eval/") and k.endswith("/loss") and not math.isfinite(v)]
            if not bad:
                return
            what = f"the evaluation loss {bad[0]} became NaN or infinite after epoch {epoch + 1}"
        good = (f"the last good checkpoint is {self.ckpt_dir / f'epoch{self._last_good:04d}.model.safetensors'} "
                f"(epoch {self._last_good})" if self._last_good else "no checkpoint was written before it")
        raise TrainingDiverged(f"{what}; {good}; train again with a lower optim.lr or with train.grad_clip")

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
            loss, terms = self._train_step(x, y, step)
            step, n_batches, seen = step + 1, n_batches + 1, seen + len(y)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            sums["loss"] = sums.get("loss", 0.0) + loss.detach()
            for h in self._after_step:
                h.after_step(self, step)
            if progress.bar is not None:
                progress.step(1, loss, seen / max(time.perf_counter() - tic, 1e-9))
        seconds = time.perf_counter() - tic
        record = {"epoch": epoch + 1, "step": step, "lr": eta,
                  **{f"train/{k}": float(v) / max(n_batches, 1) for k, v in sums.items()},
                  "train/images_per_s": seen / max(seconds, 1e-9)}
        return record, step, seconds

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """Forward, objectives, backward, before-step hooks, clip, optimizer step; no host sync."""
        t = self.cfg.train
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if self.device.type in ("cpu", "cuda") else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=t.amp):
            out = self.model(x)
            batch = Batch(x, y, epoch=getattr(self, "epoch", None))
            terms: dict[str, torch.Tensor] = {}
            for obj in self.objectives:
                new = obj(out, batch)
                if not terms.keys().isdisjoint(new):
                    raise R18Error(f"two objectives log the same term {sorted(terms.keys() & new.keys())[0]!r}; "
                                   "give one of them a distinct `tag`")
                terms.update(new)
        loss = torch.stack([v.float() for k, v in terms.items() if not is_monitor(k)]).sum()
        self._first_bad = torch.where((self._first_bad == 0) & ~torch.isfinite(loss), step + 1, self._first_bad)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for h in self._before_step:
            h.before_step(self, step + 1)
        if t.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        return loss, terms

    def _finish(self, record: dict[str, Any], step: int, elapsed: float) -> dict[str, Any]:
        if not any(k.startswith("eval/") for k in record):
            record = {**record, **self.evaluate()}
            self._check_finite(max(self._last_good or 1, 1) - 1, record)
        ckpt.save_model(self.model, self.out / "model.safetensors", self.spec, preprocessing=self.preprocessing,
                        identity=self.identity)
        summary = {"status": "done", "identity": self.identity, "steps": step, "train_seconds": elapsed,
                   "num_train": self.num_train, "num_classes": self.num_classes, "device": str(self.device),
                   "params": sum(p.numel() for p in self.model.parameters()),
                   "final": {k: v for k, v in record.items() if k.startswith("eval/")}}
        ckpt.atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train one configuration; returns the summary (also written to out_dir/summary.json)."""
    return Trainer(cfg, out_dir).fit(resume=resume, overwrite=overwrite)
