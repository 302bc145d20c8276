"""Kernel dynamics probe (Ortiz-Jiménez et al., NeurIPS 2021; spec 002d §2 P4, §4 L3): the empirical NTK K_t of the
training model on a fixed probe set at chosen epochs, with d(K_0, K_t), A(K_t, y) and E_k(y; K_t)."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...analysis.ntk import (energy_concentration, eval_mode, kernel_distance, kernel_target_alignment, ntk_matrix,
                             scalar_output, top_eigen)
from ...data.splits import load_split, nested_pools
from ...errors import ConfigError, R18Error
from ...models.io import writable_target
from ...registry import HOOKS
from ..checkpoint import atomic_write_text
from . import Hook

FOLDER = "ntk_probe"
SPLITS = ("train", "test")


def _int_list(name: str, values: Any) -> list[int]:
    if isinstance(values, (str, int)) or not isinstance(values, Sequence):
        raise ConfigError(f"ntk_probe {name} must be a list of whole numbers, got {values!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ConfigError(f"ntk_probe {name} must be a list of whole numbers, got {list(values)!r}")
    return sorted(set(values))


def kernel_file(epoch: int) -> str:
    """The saved kernel of a probe epoch, relative to the run folder."""
    return f"{FOLDER}/kernel_epoch{epoch:04d}.npy"


@HOOKS.register("ntk_probe")
class NTKProbe(Hook):
    """K_t = J(X) J(X)ᵀ (float64, BN in eval mode) on `size` probe points at each of `epochs` (0 = before training,
    e = after epoch e; later than the run: skipped), logged in that epoch's record: `ntk/distance` = d(K_0, K_t)
    with K_0 the first probe (rounding below 0 clipped), `ntk/alignment` = A(K_t, y), `ntk/energy@k` = E_k(y) over
    K_t's top-k eigenvectors for each k ≤ size of `ks`, `ntk/trace`, `ntk/seconds`. The points are a class-balanced
    subset of the run's training pool (`split: train`, `nested_pools` with the run's seed) or of its test set
    (`split: test`); y are their binary labels, so the run must be a two-class task. `head` picks the logit of a
    multi-head model; `chunk` is the number of Jacobian rows per vmap. With `save_kernels`, K_t goes to
    ntk_probe/kernel_epochXXXX.npy (float32) and the points to ntk_probe/points.json. The probe reads the model
    and changes nothing: no weights, BN statistics, train/eval flags or RNG state; it acts only between epochs."""

    def __init__(self, size: int = 256, split: str = "train", epochs: Sequence[int] = (0, 1, 2, 5, 10, 30),
                 ks: Sequence[int] = (1, 10, 100), head: str | None = None, chunk: int = 32,
                 save_kernels: bool = True) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ConfigError(f"ntk_probe size must be a whole number ≥ 2 (probe points), got {size!r}")
        if split not in SPLITS:
            raise ConfigError(f"ntk_probe split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.epochs = _int_list("epochs", epochs)
        if self.epochs and self.epochs[0] < 0:
            raise ConfigError(f"ntk_probe epochs must be ≥ 0 (0 = before training, e = after epoch e), "
                              f"got {self.epochs[0]}")
        self.ks = _int_list("ks", ks)
        if self.ks and self.ks[0] < 1:
            raise ConfigError(f"ntk_probe ks must be ≥ 1 (numbers of top eigenvectors), got {self.ks[0]}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"ntk_probe chunk must be a whole number ≥ 1 (Jacobian rows per pass), got {chunk!r}")
        if head is not None and not isinstance(head, str):
            raise ConfigError(f"ntk_probe head must be a head name or null, got {head!r}")
        if not isinstance(save_kernels, bool):
            raise ConfigError(f"ntk_probe save_kernels must be true or false, got {save_kernels!r}")
        self.size, self.split, self.head, self.chunk, self.save_kernels = size, split, head, chunk, save_kernels
        self.indices: torch.Tensor | None = None    # positions in the run's training pool or test tensors
        self.reference: torch.Tensor | None = None  # K_0: the first probe's kernel (float64, CPU)
        self.reference_epoch: int | None = None

    # -- events -----------------------------------------------------------------------------------
    def on_fit_start(self, ctx) -> None:
        model = ctx.model
        if getattr(model, "peers", None) is not None:
            raise ConfigError("ntk_probe measures one network's kernel but the model is a peer group; drop the "
                              "peers (model.peers / a co-training objective) or the ntk_probe hook")
        if ctx.num_classes != 2:
            raise ConfigError(f"ntk_probe: kernel-target alignment needs a two-class task but the data has "
                              f"{ctx.num_classes} classes; set data.task=cifar2 or {{name: binary, positive: [...]}}")
        self.indices, self.reference, self.reference_epoch = None, None, None
        if self.save_kernels:  # a fresh run: no kernel of an earlier run in this folder may pass for this one's
            for old in (ctx.out / FOLDER).glob("kernel_epoch*.npy"):
                old.unlink(missing_ok=True)
        x, _ = self._points(ctx)
        with torch.no_grad(), eval_mode(model):  # one logit (or `head`) per sample, else one line now
            scalar_output(model(x[:1]), self.head)
        if 0 in self.epochs:
            ctx.log({"epoch": 0, **self._probe(ctx, 0)})

    def on_epoch_end(self, ctx, epoch: int, metrics: dict[str, Any]) -> None:
        if epoch + 1 in self.epochs:
            metrics.update(self._probe(ctx, epoch + 1))

    def state_dict(self) -> dict[str, Any]:
        return {"indices": self.indices, "reference": self.reference, "reference_epoch": self.reference_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        indices, reference = state.get("indices"), state.get("reference")
        self.indices = None if indices is None else indices.detach().to("cpu", torch.long)
        self.reference = None if reference is None else reference.detach().to("cpu", torch.float64)
        self.reference_epoch = state.get("reference_epoch")

    # -- the probe --------------------------------------------------------------------------------
    def _source(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels) the probe draws from: the run's training pool or its test tensors."""
        if self.split == "train":
            return ctx.loader.images, ctx.loader.labels
        return ctx.x_test, ctx.y_test

    def _points(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe's normalised images and labels; the indices are chosen once (numpy only) and written out."""
        images, labels = self._source(ctx)
        if self.indices is None:
            pool = labels.cpu().numpy()
            if self.size > len(pool):
                raise ConfigError(f"ntk_probe size={self.size} exceeds the {len(pool)} {self.split} images of this "
                                  "run; pass a smaller size")
            try:
                picked = nested_pools(pool, [self.size], seed=ctx.cfg.seed)[0]
            except R18Error as e:
                raise ConfigError(f"ntk_probe size={self.size}: {e}") from None
            self.indices = torch.from_numpy(picked)
            if self.save_kernels:
                self._write_points(ctx, pool)
        idx = self.indices.to(images.device)
        return ctx.normalizer(images[idx]), labels[idx]

    def _write_points(self, ctx, pool: np.ndarray) -> None:
        idx = self.indices.numpy()
        if self.split == "train":
            source = np.asarray(ctx.data.train_indices)[idx]
        else:
            split_file = ctx.out / "splits.json"
            test = load_split(split_file).get("test") if split_file.is_file() else None
            source = idx if test is None else np.asarray(test)[idx]
        payload = {"split": self.split, "size": self.size, "seed": ctx.cfg.seed,
                   "indices": idx.tolist(), "dataset_indices": [int(i) for i in source],
                   "labels": [int(v) for v in pool[idx]],
                   "note": "indices: positions in the run's training pool (split train) or test tensors (split test); "
                           "dataset_indices: the same points in the data source's split"}
        atomic_write_text(ctx.out / FOLDER / "points.json", json.dumps(payload))

    def _probe(self, ctx, epoch: int) -> dict[str, float]:
        tic = time.perf_counter()
        model = ctx.model
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the training's RNG stream is left exactly as it was
            x, y = self._points(ctx)
            kernel = ntk_matrix(model, x, chunk=self.chunk, dtype=torch.float64, head=self.head)
        kernel = kernel.detach().to("cpu", torch.float64)
        y = y.detach().cpu()
        if self.reference is None:
            self.reference, self.reference_epoch = kernel, epoch
        # d(K_0, K_0) is 0 by definition; elsewhere a rounding just below 0 (d ≥ 0 for PSD kernels) is clipped
        distance = 0.0 if kernel is self.reference else max(0.0, kernel_distance(self.reference, kernel))
        record = {"ntk/distance": distance,
                  "ntk/alignment": kernel_target_alignment(kernel, y),
                  "ntk/trace": float(kernel.trace())}
        ks = [k for k in self.ks if k <= len(y)]
        if ks:
            _, vecs = top_eigen(kernel, max(ks))
            record.update({f"ntk/energy@{k}": float(e) for k, e in zip(ks, energy_concentration(vecs, y, ks))})
        if self.save_kernels:
            with writable_target(ctx.out / kernel_file(epoch)) as tmp, open(tmp, "wb") as f:
                np.save(f, kernel.to(torch.float32).numpy())
        record["ntk/seconds"] = time.perf_counter() - tic
        return record
