"""The one training loop. It names no method: heads, objectives and hooks come from registries via the config."""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import objectives as _objectives  # noqa: F401  (registers objectives)
from ..config import RunConfig, config_dict, run_identity, specs, teacher_paths
from ..data.training import TrainingData, prepare as prepare_data
from ..errors import ConfigError, R18Error, TrainingDiverged
from ..models.io import (Normalizer, build_from_spec, load_checkpoint,  # noqa: F401  (build_from_spec,
                         model_spec, teacher_identity)                 # model_spec: public here too)
from ..objectives.base import Batch, ObjectiveContext, build_objectives, is_monitor
from ..objectives.supervised import predicted_labels, summed_loss
from ..results.metrics import MetricsWriter, keep_epochs
from . import checkpoint as ckpt
from . import distributed, rundir
from .environment import pick_device, run_environment  # noqa: F401  (pick_device: public here too)
from .hooks import build_hook, overrides
from .optim import build_optimizer, lr_factor, set_learning_rates
from .trackers import Mirrors, check as check_trackers


def confusion_counts(y: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C×C int64 counts of (true y, predicted) pairs on their device, rows true, columns predicted: onehot(y)ᵀ ·
    onehot(pred) — a matmul of 0/1 values, exact and deterministic, with no host sync (a `bincount` reads its
    maximum back on CUDA)."""
    eye = torch.nn.functional.one_hot
    return (eye(y.long(), num_classes).T.float() @ eye(pred.long(), num_classes).float()).long()


@dataclass
class Evaluation:
    """One evaluation: `metrics` ({eval/<head>/acc, balanced_acc (%), loss}) and each head's confusion matrix
    (C×C counts, rows true class, columns predicted)."""

    metrics: dict[str, float]
    confusion: dict[str, list[list[int]]]

    def per_class(self, classes: list[str] | None = None) -> dict[str, Any]:
        """{"classes": names, "heads": {head: balanced_acc, per_class_acc, support, confusion}} for summaries and
        `eval --json`."""
        from ..results.confusion import class_names, head_report
        c = len(next(iter(self.confusion.values()))) if self.confusion else 0
        return {"classes": class_names(classes, c), "heads": {h: head_report(m) for h, m in self.confusion.items()}}


@torch.no_grad()
def evaluate_detailed(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer,
                      batch_size: int = 512, channels_last: bool = False,
                      progress: Callable[[int, int], None] | None = None,
                      reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Evaluation:
    """Accuracy, balanced accuracy (%), mean loss and the confusion matrix of every head over uint8 images on the
    model's device: argmax and CE, or for a one-logit head, z > 0 and sigmoid BCE (`predicted_labels`,
    `summed_loss`; two classes). Counts and losses stay on the device and are read once, at the end.
    Heads with their own number of classes (`Classifier.own_classes`, another label set) are left out.
    `progress(done, total)` is called after each batch (images done so far; no host read). `reduce` (DDP: a sum
    across ranks, each holding a shard of the images) is applied once to the summed counts and losses before the
    one host read."""
    from ..results.confusion import balanced_accuracy
    was_training = model.training
    model.eval()
    foreign = {h for h, c in getattr(model, "own_classes", {}).items() if c != model.num_classes}  # another label set
    conf: dict[str, torch.Tensor] = {}
    loss: dict[str, torch.Tensor] = {}
    total = len(labels)
    for i in range(0, total, batch_size):
        x = normalizer(images[i:i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch_size]
        for h, z in model(x).logits.items():
            if h in foreign or h.split(".")[0] in foreign:
                continue
            counts = confusion_counts(y, predicted_labels(z), max(z.shape[1], 2))
            conf[h] = conf[h] + counts if h in conf else counts
            loss[h] = loss[h] + summed_loss(z, y).double() if h in loss else summed_loss(z, y).double()
        if progress is not None:
            progress(min(i + batch_size, total), total)
    model.train(was_training)
    heads = list(conf)
    if not heads:
        return Evaluation({}, {})
    flat = torch.cat([torch.stack([loss[h] for h in heads])] + [conf[h].flatten().double() for h in heads]
                     + [torch.full((1,), float(total), dtype=torch.float64, device=loss[heads[0]].device)])
    if reduce is not None:
        flat = reduce(flat)
    values = flat.cpu().tolist()  # the one host read of the evaluation
    n, metrics, matrices, at = max(int(values[-1]), 1), {}, {}, len(heads)
    for j, h in enumerate(heads):
        c = conf[h].shape[0]
        m = [[int(v) for v in values[at + r * c: at + (r + 1) * c]] for r in range(c)]
        at += c * c
        matrices[h] = m
        metrics[f"eval/{h}/acc"] = 100.0 * sum(m[k][k] for k in range(c)) / n
        metrics[f"eval/{h}/balanced_acc"] = balanced_accuracy(m)
        metrics[f"eval/{h}/loss"] = values[j] / n
    return Evaluation(metrics, matrices)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer,
             batch_size: int = 512, channels_last: bool = False) -> dict[str, float]:
    """{eval/<head>/acc, balanced_acc, loss} of every head (see `evaluate_detailed`, which adds the confusion
    matrices)."""
    return evaluate_detailed(model, images, labels, normalizer, batch_size, channels_last).metrics


#: seconds between progress lines in line mode (CI logs): a long step or evaluation still says where it is
PROGRESS_EVERY_S = 30.0
#: an evaluation's images/s against training's before the first evaluation is timed: a forward pass alone is
#: about a third of forward + backward (+ augmentation and optimizer step), so ≈ 3× the training throughput
EVAL_SPEEDUP = 3.0


def _duration(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class Progress:
    """Progress on a terminal (bar with throughput and ETA) or plain lines (CI: `lines`, or `auto` without a TTY).

    In line mode a line is printed at the end of every epoch and, within a long epoch or evaluation, at least
    every `every` seconds. The ETA counts the training steps left at the measured seconds per step plus the
    evaluations left (`eval_epochs`: the 0-based epochs after which the run evaluates) at the measured seconds
    of one, or before the first is timed, `eval_images` at EVAL_SPEEDUP × the training throughput. Time comes
    from `clock` (time.perf_counter) only; nothing here reads the device."""

    mode: str
    total_steps: int
    label: str = ""
    bar: Any = None
    epochs: int = 1
    eval_epochs: list[int] = field(default_factory=list)
    eval_images: int = 0
    every: float = PROGRESS_EVERY_S
    clock: Callable[[], float] = time.perf_counter
    write: Callable[[str], None] | None = None
    started: float = field(default=math.nan)

    def __post_init__(self) -> None:
        if self.mode == "auto":
            self.mode = "bar" if sys.stderr.isatty() else "lines"
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=self.total_steps, unit="step", dynamic_ncols=True, leave=False)
        if self.write is None:
            self.write = self.bar.write if self.bar is not None else lambda s: print(s, file=sys.stderr, flush=True)
        self.started = self.clock() if math.isnan(self.started) else self.started
        self.last_line = self.started
        self.start_step = self.done_steps = 0
        self.epoch_index = 0
        self.images_per_s = 0.0
        self.eval_seconds: list[float] = []  # of each evaluation timed
        self.eval_time = 0.0  # seconds spent evaluating (not training) since the start
        self._eval_started: float | None = None
        self._eval_progress = (0, 0)  # images done, of how many, in the evaluation running
        self.pending_evals = sorted(self.eval_epochs)

    def resume_at(self, step: int, epoch: int) -> None:
        """A resumed run starts at `step` (of epoch `epoch`): the bar and the rates count from there."""
        self.start_step = self.done_steps = step
        self.epoch_index = epoch
        self.pending_evals = [e for e in self.pending_evals if e >= epoch]
        if self.bar is not None:
            self.bar.update(step)

    # -- estimates ------------------------------------------------------------------------------------
    def eval_estimate(self) -> float:
        """Seconds one evaluation takes: the mean of those timed, else from the test size and training speed."""
        if self.eval_seconds:
            return sum(self.eval_seconds) / len(self.eval_seconds)
        return self.eval_images / (EVAL_SPEEDUP * self.images_per_s) if self.images_per_s > 0 else 0.0

    def eta(self, now: float | None = None) -> float:
        """Seconds left: training steps at the measured seconds per step, plus the evaluations left."""
        now = self.clock() if now is None else now
        running = 0.0 if self._eval_started is None else now - self._eval_started
        steps = self.done_steps - self.start_step
        train_s = max(now - self.started - self.eval_time - running, 0.0)
        per_step = train_s / steps if steps > 0 else 0.0
        left = max(self.total_steps - self.done_steps, 0) * per_step
        pending = len(self.pending_evals)
        if self._eval_started is not None and pending:  # the one running: at its own pace once it has begun
            done, total = self._eval_progress
            left += running * (total - done) / done if done else max(self.eval_estimate() - running, 0.0)
            pending -= 1
        return left + pending * self.eval_estimate()

    def _due(self, now: float) -> bool:
        return self.mode == "lines" and now - self.last_line >= self.every

    def _say(self, text: str, now: float) -> None:
        self.last_line = now
        self.write(f"{self.label + ': ' if self.label else ''}{text}")

    # -- training -------------------------------------------------------------------------------------
    def step(self, n: int, loss: torch.Tensor | float | None, images_per_s: float, epoch: int | None = None) -> None:
        """Advance by n steps. Bar: the loss (read from the device) only every 50 steps, so no per-step sync.
        Lines: a line when `every` seconds have passed since the last one (a clock read, no device read)."""
        self.done_steps += n
        if epoch is not None:
            self.epoch_index = epoch
        if images_per_s > 0:
            self.images_per_s = images_per_s
        if self.bar is not None:
            self.bar.update(n)
            if loss is not None and (self.bar.n % 50 == 0 or not torch.is_tensor(loss)):
                self.bar.set_postfix(loss=f"{float(loss):.3f}", img_s=f"{images_per_s:.0f}")
            return
        now = self.clock()
        if self._due(now):
            pct = 100.0 * self.done_steps / max(self.total_steps, 1)
            self._say(f"epoch {self.epoch_index + 1}/{self.epochs} step {self.done_steps}/{self.total_steps} "
                      f"({pct:.0f}%) {self.images_per_s:.0f} img/s eta {_duration(self.eta(now))}", now)

    # -- evaluation -----------------------------------------------------------------------------------
    def eval_start(self) -> None:
        self._eval_started = self.clock()
        self._eval_progress = (0, 0)

    def eval_batch(self, done: int, total: int) -> None:
        """After each evaluation batch: a line in line mode when `every` seconds have passed."""
        now = self.clock()
        self._eval_progress = (done, total)
        if self._due(now):
            self._say(f"evaluating {done}/{total} images ({100.0 * done / max(total, 1):.0f}%) "
                      f"eta {_duration(self.eta(now))}", now)

    def eval_end(self) -> None:
        """The evaluation ended (its results were read back, so the time is real): time it, one fewer to come."""
        if self._eval_started is None:
            return
        seconds = self.clock() - self._eval_started
        self._eval_started = None
        self.eval_seconds.append(seconds)
        self.eval_time += seconds
        if self.pending_evals:
            self.pending_evals.pop(0)

    def epoch(self, epoch: int, epochs: int, record: dict[str, Any], done_steps: int, images_per_s: float) -> None:
        if self.mode == "none":
            return
        now = self.clock()
        self.done_steps, self.epoch_index = done_steps, epoch + 1
        self.pending_evals = [e for e in self.pending_evals if e > epoch]
        if images_per_s > 0:
            self.images_per_s = images_per_s
        accs = " ".join(f"{k.split('/')[1]} {v:.2f}%" for k, v in record.items()
                        if k.startswith("eval/") and k.endswith("/acc"))
        self._say(f"epoch {epoch + 1}/{epochs} loss {record.get('train/loss', float('nan')):.4f} {accs} "
                  f"{images_per_s:.0f} img/s eta {_duration(self.eta(now))}", now)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def eval_epochs(epochs: int, eval_every: int, total_steps: int, steps_per_epoch: int) -> list[int]:
    """The 0-based epochs after which the engine evaluates: every `eval_every`-th, the last, and the one where
    `total_steps` (train.max_steps) ends training."""
    last = min(epochs, -(-total_steps // max(steps_per_epoch, 1))) - 1
    return [e for e in range(last + 1) if (e + 1) % eval_every == 0 or e + 1 == epochs or e == last]


class _Records:
    """Where metrics records go: metrics.jsonl and the tracker mirrors on rank 0; nowhere on the other ranks."""

    def __init__(self, writer: MetricsWriter | None = None, mirrors: Mirrors | None = None) -> None:
        self.writer, self.mirrors = writer, mirrors

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(record)
        if self.mirrors is not None:
            self.mirrors.log(record)

    def close(self, status: str = "FINISHED") -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mirrors is not None:
            self.mirrors.close(status)


class Trainer:
    """Runs one configuration into `out_dir`: the loop, and the calls into data set-up, model I/O, objectives,
    hooks and checkpoints. `claim` checks the folder (before anything is written) and locks it.

    Under torchrun (WORLD_SIZE > 1) each process is one rank of a DDP run (`distributed`): every rank draws the
    same order and trains on its slice of each global batch of train.batch_size, evaluation is sharded and reduced,
    and only rank 0 writes (folder, metrics, checkpoints, summary, mirrors). `model` is always the plain module
    (hooks, evaluation and checkpoints use it); `net` is what the training step calls (DDP and/or torch.compile
    around it, sharing its parameters)."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path, label: str = "") -> None:
        self.cfg = cfg
        self.label = label
        self.out = Path(out_dir)
        self.world = distributed.world_from_env()
        device = pick_device(cfg.train.device)
        distributed.check(cfg.train, self.world, device)
        if self.world.is_main:
            check_trackers(cfg.track)
        self.device = distributed.setup(self.world, device)
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
        outcome: Any = None
        if self.world.is_main:
            try:
                self.prepare_output()
                self._lock = rundir.RunLock(self.out)
                self._lock.acquire()
                try:
                    outcome = rundir.check_may_write(self.out, config_dict(self.cfg), resume, overwrite)
                except BaseException:
                    self.release()
                    raise
            except Exception as e:  # every rank stops with rank 0's one line
                outcome = e
        outcome = distributed.broadcast(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        self.state = outcome
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
                               head_classes=dict(getattr(self.model, "head_classes", {})),
                               extras={"class_counts": self.class_counts(), "seed": self.cfg.seed,
                                       "epochs": self.cfg.train.epochs})
        self.objectives = build_objectives(specs(self.cfg.objective, "objective"), ctx)
        self._composer, self._unlabelled = self._unlabelled_stream()
        self.hooks = [build_hook(n, p) for n, p in specs(self.cfg.hooks, "hook")]
        self._weight_swaps = [h for h in self.hooks if overrides(h, "evaluation_weights")]
        self._before_step = [h for h in self.hooks if overrides(h, "before_step")]
        self._after_step = [h for h in self.hooks if overrides(h, "after_step")]
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        self.net = distributed.wrap(self.model, self.device, self.world, self.cfg.train.sync_bn)
        if self.cfg.train.compile:
            self.net = torch.compile(self.net)

    def _unlabelled_stream(self):
        """(the objective that composes batches from unlabelled data, its stream of views), or (None, None)."""
        composer = next((o for o in self.objectives if o.unlabelled_views), None)
        if composer is None:
            return None, None
        images = self.data.unlabelled
        if images is None:
            raise ConfigError(f"objective {composer.name} needs unlabelled data but the run has none; set "
                              "data.unlabelled=rest (the training images outside the labelled pool, their labels unused)")
        from ..data.unlabelled import UnlabelledStream
        stream = UnlabelledStream(images, self.cfg.train.batch_size, composer.unlabelled_views, self.cfg.seed,
                                  self.data.augment)
        stream.set_shard(self.world.rank, self.world.size)
        return composer, stream

    def evaluation_weights(self):
        """A context in which the model holds the weights evaluated and saved (a hook's EMA, else the training ones)."""
        stack = contextlib.ExitStack()
        for h in getattr(self, "_weight_swaps", []):
            stack.enter_context(h.evaluation_weights(self))
        return stack

    def class_counts(self) -> list[int]:
        """Training images per class (of the labelled pool), for objectives such as `ce` with class weights;
        one host read, at set-up."""
        labels = self.loader.labels
        return torch.bincount(labels.long(), minlength=self.num_classes).tolist() if len(labels) else \
            [0] * self.num_classes

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
        """Hooks may call this to add records to metrics.jsonl (and the tracker mirrors); rank 0 only writes."""
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
        t, main = self.cfg.train, self.world.is_main
        if main:
            if self._overwrite:
                rundir.clear(self.out)
            rundir.clean_stale(self.out, ckpt.committed_tag(self.ckpt_dir) if resume else None)
            ckpt.atomic_write_text(self.out / "config.json", json.dumps(config_dict(self.cfg), indent=2))
            self.data: TrainingData = prepare_data(self.cfg, self.out, self.device)
        distributed.barrier()  # rank 0 has cleaned the folder and filled the data cache; the others read it
        if not main:
            self.data = prepare_data(self.cfg, self.out, self.device, write=False)
        self._normalizer = self.preprocessing.normalizer().to(self.device)
        self.loader.set_sampler(t.sampler)
        self.loader.set_shard(self.world.rank, self.world.size)
        self._setup_model()
        start_epoch, step, elapsed = (ckpt.restore_training_state(self.ckpt_dir, self.model, self.optimizer,
                                                                   self.hooks, self.device)
                                      if resume else (0, 0, 0.0))
        metrics_path = self.out / "metrics.jsonl"
        self.metrics = _Records()
        if main:
            if resume:
                keep_epochs(metrics_path, start_epoch)  # a kill after a metrics write but before its checkpoint
            else:
                metrics_path.unlink(missing_ok=True)
            mirrors = Mirrors(self.cfg.track, self.out, config_dict(self.cfg), resume) if self.cfg.track else None
            self.metrics = _Records(MetricsWriter(metrics_path), mirrors)
        total_steps = t.epochs * len(self.loader)
        total_steps = total_steps if t.max_steps is None else min(t.max_steps, total_steps)
        progress = Progress(t.progress if main else "none", total_steps, self.label, epochs=t.epochs,
                            eval_epochs=eval_epochs(t.epochs, t.eval_every, total_steps, len(self.loader)),
                            eval_images=len(self.y_test), every=PROGRESS_EVERY_S)
        progress.resume_at(step, start_epoch)  # a resumed run's bar and rates start where it stopped
        self._progress = progress
        self._first_bad = torch.zeros((), dtype=torch.long, device=self.device)  # first non-finite step, 0 = none
        self._last_good = start_epoch if resume and start_epoch else None
        if start_epoch == 0:
            for h in self.hooks:
                h.on_fit_start(self)
        record: dict[str, Any] = {}
        status = "FAILED"
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
                if main:
                    ckpt.save_training_state(self.ckpt_dir, epoch=epoch + 1, step=step, elapsed=elapsed,
                                             model=self.model, model_spec=self.spec, optimizer=self.optimizer,
                                             hooks=self.hooks)
                self._last_good = epoch + 1
                progress.epoch(epoch, t.epochs, record, step, record["train/images_per_s"])
            status = "FINISHED"
        finally:
            progress.close()
            self.metrics.close(status)
        return self._finish(record, step, elapsed)

    def evaluate(self) -> dict[str, float]:
        """Evaluate the evaluated weights (a hook's EMA, else the trained ones) on the test split, kept whole in
        `last_evaluation` (confusion matrices included); the flat metrics, balanced accuracy included, go to
        metrics.jsonl."""
        progress = getattr(self, "_progress", None)
        if progress is not None:
            progress.eval_start()
        with self.evaluation_weights():
            self.last_evaluation = self._evaluate_test(progress)
        if progress is not None:
            progress.eval_end()
        return dict(self.last_evaluation.metrics)

    def _evaluate_test(self, progress: Progress | None = None) -> Evaluation:
        """The model as it is on the test split; under DDP a shard per rank, summed across ranks once."""
        x, y, reduce = self.x_test, self.y_test, None
        if self.world.enabled and len(y) >= self.world.size:
            lo, hi = self.world.shard(len(y))
            x, y, reduce = x[lo:hi], y[lo:hi], distributed.all_reduce
        return evaluate_detailed(self.model, x, y, self.normalizer, self.cfg.train.eval_batch_size,
                                 self.cfg.train.channels_last, progress.eval_batch if progress is not None else None,
                                 reduce)

    def _check_finite(self, epoch: int, record: dict[str, Any] | None = None) -> None:
        """One host read per logging point: the first non-finite loss step, non-finite weights, eval losses."""
        if record is None:
            first = self._first_bad
            if self.world.enabled:  # the earliest bad step of any rank (0 = none): one reduction per epoch
                never = torch.iinfo(torch.long).max
                first = distributed.all_reduce(torch.where(first == 0, never, first), "min")
                first = torch.where(first == never, 0, first)
            bad_step = int(first)
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
        self.net.train()
        steps_per_epoch = len(self.loader)
        tic, seen, n_batches, eta = time.perf_counter(), 0, 0, cfg.optim.lr
        sums: dict[str, torch.Tensor] = {}  # summed on the device; read once per epoch
        world = self.world.size
        for i, (x, y) in enumerate(self.loader):
            if step >= total_steps:
                break
            self.progress_epochs = epoch + i / steps_per_epoch  # fractional: the schedule's and objectives' ramps
            eta = set_learning_rates(self.optimizer, cfg.optim.lr,
                                     lr_factor(cfg.schedule, self.progress_epochs, t.epochs), cfg.schedule.min_lr)
            # DDP averages the ranks' gradients: a slice of n of a global batch of N weighs n·world/N, so the
            # average is the gradient of the global batch's mean loss (1 whenever the slices are equal)
            loss, terms = self._train_step(x, y, step) if world == 1 else \
                self._train_step(x, y, step, len(y) * world / self.loader.global_batch_size(self.loader.start + i))
            step, n_batches, seen = step + 1, n_batches + 1, seen + len(y)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            sums["loss"] = sums.get("loss", 0.0) + loss.detach()
            for h in self._after_step:
                h.after_step(self, step)
            if progress.mode != "none":  # a clock read (and every 50 steps, with a bar, the loss): no per-step sync
                progress.step(1, loss, seen * world / max(time.perf_counter() - tic, 1e-9), epoch)
        if self.world.enabled and sums:  # the ranks' means, averaged: one reduction per epoch
            keys = sorted(sums)
            mean = distributed.all_reduce(torch.stack([torch.as_tensor(sums[k], device=self.device).float()
                                                       for k in keys])) / world
            sums = dict(zip(keys, mean.unbind()))
        seconds = time.perf_counter() - tic
        record = {"epoch": epoch + 1, "step": step, "lr": eta,
                  **{f"train/{k}": float(v) / max(n_batches, 1) for k, v in sums.items()},
                  "train/images_per_s": seen * world / max(seconds, 1e-9)}
        return record, step, seconds

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, step: int, scale: float = 1.0) -> tuple[torch.Tensor, dict]:
        """Forward, objectives, backward (of loss × `scale`, see `_run_epoch`), before-step hooks, clip, optimizer
        step; no host sync. A composing objective (MixMatch) first builds the batch forwarded from this one and the
        step's unlabelled views."""
        t = self.cfg.train
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if self.device.type in ("cpu", "cuda") else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=t.amp):
            batch = Batch(x, y, epoch=getattr(self, "epoch", None), progress=getattr(self, "progress_epochs", None))
            if self._composer is not None:
                views = self._unlabelled.at(step)
                if t.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                batch = self._composer.compose(batch, views, self.net, step)
            out = self.net(batch.x)
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
        (loss * scale if scale != 1.0 else loss).backward()
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
        if self.world.is_main:
            with self.evaluation_weights():
                ckpt.save_model(self.model, self.out / "model.safetensors", self.spec,
                                preprocessing=self.preprocessing, identity=self.identity)
        last = getattr(self, "last_evaluation", None)
        summary = {"status": "done", "identity": self.identity, "steps": step, "train_seconds": elapsed,
                   "num_train": self.num_train, "num_classes": self.num_classes, "device": str(self.device),
                   "params": sum(p.numel() for p in self.model.parameters()),
                   "final": {k: v for k, v in record.items() if k.startswith("eval/")},
                   "weights": "+".join(getattr(h, "weights_name", type(h).__name__) for h in self._weight_swaps)
                   or "trained",
                   # with an EMA (or another swap) evaluated, the trained weights' figures too, to compare
                   **({"final_trained": dict(self._evaluate_test().metrics)} if self._weight_swaps else {}),
                   **({"per_class": last.per_class(list(self.data.classes))} if last is not None else {})}
        if self.world.is_main:
            ckpt.atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        distributed.barrier()  # the other ranks return once rank 0's files are there
        return summary


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train one configuration; returns the summary (also written to out_dir/summary.json)."""
    return Trainer(cfg, out_dir).fit(resume=resume, overwrite=overwrite)
