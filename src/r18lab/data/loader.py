"""On-device batching: the order and augmentation of epoch e depend only on (seed, e)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import DataError
from .augment import Augment
from .dataset import Dataset


def to_device_tensors(dataset: Dataset, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 N×C×H×W images, int64 labels) of a Dataset on device."""
    images = np.ascontiguousarray(np.asarray(dataset.images).transpose(0, 3, 1, 2))
    labels = np.array(dataset.labels, dtype=np.int64)
    return torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of non-negative ints (mixed by numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)
    return torch.Generator(device="cpu").manual_seed(int(state[0] >> np.uint64(1)))


SAMPLERS = ("uniform", "balanced")


def balanced_order(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n example indices (CPU), each drawn by picking one of the classes present with equal probability, then
    one of its examples uniformly: P(i) = 1 / (C_present · n_{y_i})."""
    y = labels.detach().cpu().long()
    by_class = torch.argsort(y, stable=True)
    counts = torch.bincount(y)
    present = torch.nonzero(counts).flatten()
    sizes = counts[present]
    starts = torch.cumsum(counts, 0)[present] - sizes
    c = torch.randint(len(present), (n,), generator=generator)
    within = (torch.rand(n, generator=generator, dtype=torch.float64) * sizes[c]).long().clamp_max_(sizes[c] - 1)
    return by_class[starts[c] + within]


class BatchLoader:
    """Yields (x float32, y) batches from tensors already on device; call set_epoch(e) before each epoch.

    Epoch e's order comes from a generator seeded by (seed, e) and batch b's augmentation from one
    seeded by (seed, e, b), so any epoch, or the tail of one from set_epoch(e, start=b), replays exactly.
    `sampler="uniform"`: the order is a permutation (each example once per epoch); `"balanced"`: N draws with
    replacement, each of a class picked with equal probability then an example of it uniformly (so rare classes
    repeat and common ones are subsampled), from the same seeded generator.
    Without an augment the batch is x/255 in float32 (no normalisation) and views is ignored.
    `set_shard(rank, world)` (DDP): every rank draws the same order and yields its contiguous slice of each global
    batch; the whole global batch is augmented (same draws as one process) and then sliced, so the slices of all
    ranks together are exactly one process's batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        views: int = 1,
        sampler: str = "uniform",
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            got = f"{images.dtype} {tuple(images.shape)}"
            raise DataError(f"BatchLoader needs uint8 N×C×H×W images, got {got}; use to_device_tensors")
        if labels.shape[:1] != images.shape[:1]:
            raise DataError(f"{len(images)} images but {len(labels)} labels; pass matching tensors")
        if batch_size < 1 or seed < 0 or views < 1:
            raise DataError(f"batch_size and views must be >= 1 and seed >= 0, got {batch_size}, {views}, {seed}")
        if drop_last and batch_size > len(images):
            raise DataError(f"batch_size {batch_size} exceeds the {len(images)} examples with drop_last; lower it")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.augment, self.views = seed, augment, views
        self.epoch, self.start = 0, 0
        self.rank, self.world = 0, 1
        self.set_sampler(sampler)

    def set_shard(self, rank: int, world: int) -> None:
        """Yield only rank `rank`'s contiguous slice (of `world`) of every global batch of `batch_size`."""
        if world < 1 or not 0 <= rank < world:
            raise DataError(f"shard rank must be in 0..world-1 with world >= 1, got rank {rank} of {world}")
        self.rank, self.world = rank, world

    def set_sampler(self, sampler: str) -> None:
        """`uniform` (a permutation per epoch) or `balanced` (each draw: a class with equal probability, then
        one of its examples); `balanced` needs shuffle."""
        if sampler not in SAMPLERS:
            raise DataError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if sampler == "balanced" and not self.shuffle:
            raise DataError("the balanced sampler draws at random; it needs shuffle=True")
        self.sampler = sampler
        self._cpu_labels = self.labels.detach().cpu() if sampler == "balanced" else None  # read once, not per epoch

    def __len__(self) -> int:
        """Batches per epoch. A last batch of a single image is left out (batch norm cannot train on one image;
        the order is reshuffled every epoch, so a different image sits out each time); sharded over `world` ranks,
        so is one of fewer than `world` images (a rank would get none)."""
        n = len(self.images)
        short = n > self.batch_size and n % self.batch_size < max(2, self.world)  # sharded: a slice for each rank
        return n // self.batch_size if self.drop_last or short else -(-n // self.batch_size)

    def global_batch_size(self, b: int) -> int:
        """Images in global batch b (all ranks together); the last one may be smaller."""
        return min(self.batch_size, len(self.images) - b * self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select epoch `epoch`; iterations begin at its batch `start` (to resume mid-epoch) until set again."""
        if epoch < 0 or not 0 <= start <= len(self):
            raise DataError(f"epoch must be >= 0 and start in 0..{len(self)}, got {epoch}, {start}")
        self.epoch, self.start = epoch, start

    def order(self) -> torch.Tensor:
        """This epoch's example order on the images' device."""
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n, device=self.images.device)
        g = seeded_generator(self.seed, self.epoch)
        if self.sampler == "balanced" and n:
            return balanced_order(self._cpu_labels, n, g).to(self.images.device)
        return torch.randperm(n, generator=g).to(self.images.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]]:
        order = self.order()
        for b in range(self.start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            lo, hi = len(idx) * self.rank // self.world, len(idx) * (self.rank + 1) // self.world
            if self.augment is None:
                idx = idx[lo:hi]
                yield self.images[idx].float().div_(255), self.labels[idx]
                continue
            x = self.augment(self.images[idx], seeded_generator(self.seed, self.epoch, b), views=self.views)
            if self.world > 1:
                x = [v[lo:hi] for v in x] if isinstance(x, list) else x[lo:hi]
            yield x, self.labels[idx[lo:hi]]
