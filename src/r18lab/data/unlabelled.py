"""The unlabelled stream of semi-supervised training: for every training step, a batch of unlabelled images in K
independently augmented views, endless (it wraps around the unlabelled pool as often as the run needs)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import ConfigError
from .augment import Augment
from .loader import BatchLoader

#: added to the run's seed for the unlabelled order, so it is not the labelled pool's order replayed on other images
SEED_OFFSET = 7919


def unlabelled_rows(n_train: int, labelled: np.ndarray) -> np.ndarray:
    """Rows of the training split outside the labelled pool, ascending (`data.unlabelled: rest`)."""
    keep = np.ones(n_train, dtype=bool)
    keep[np.asarray(labelled, dtype=np.int64)] = False
    return np.flatnonzero(keep)


class UnlabelledStream:
    """Batch `s` (the run's 0-based training step) is batch s mod n of pass s div n over the unlabelled images, n =
    batches per pass, each pass in an order drawn from (seed, pass) and each batch augmented from (seed, pass, b):
    a pure function of (seed, s), so a resumed run draws what an uninterrupted one would. DDP: every rank draws
    the same global batch and keeps its slice (`set_shard`), as the labelled loader."""

    def __init__(self, images: torch.Tensor, batch_size: int, views: int, seed: int, augment: Augment | None) -> None:
        if len(images) < 2:
            raise ConfigError(f"the unlabelled pool holds {len(images)} image(s); semi-supervised training needs "
                              "unlabelled images: label fewer images (data.labels) or use a larger training split")
        labels = torch.zeros(len(images), dtype=torch.long, device=images.device)  # never read
        self.loader = BatchLoader(images, labels, batch_size=min(batch_size, len(images)), shuffle=True,
                                  drop_last=True, seed=seed + SEED_OFFSET, augment=augment, views=views)
        self.views = views
        self._iter: Iterator | None = None
        self._next = -1

    def set_shard(self, rank: int, world: int) -> None:
        self.loader.set_shard(rank, world)

    def at(self, step: int) -> list[torch.Tensor]:
        """The K views (a list of K float32 batches) for training step `step`."""
        if step != self._next or self._iter is None:
            epoch, start = divmod(step, len(self.loader))
            self.loader.set_epoch(epoch, start)
            self._iter = iter(self.loader)
        try:
            x, _ = next(self._iter)
        except StopIteration:  # the pass ended: the next one, from its first batch
            self.loader.set_epoch(step // len(self.loader), 0)
            self._iter = iter(self.loader)
            x, _ = next(self._iter)
        self._next = step + 1
        return list(x) if isinstance(x, list) else [x] * self.views  # no augmentation: K equal views
