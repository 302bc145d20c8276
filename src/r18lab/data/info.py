"""What `r18lab data inspect|prepare` report: a split's shape and classes, and decode-all-splits timing."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .builtin import BUILTIN_SPLITS
from .dataset import Dataset
from .loading import is_builtin, load, load_splits, pick_split


def describe(ds: Dataset) -> dict[str, Any]:
    """n, image shape (H, W, C), classes and per-class counts of a Dataset."""
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    return {
        "n": len(ds),
        "image_shape": list(ds.images.shape[1:]),
        "classes": list(ds.classes),
        "class_counts": {cls: int(c) for cls, c in zip(ds.classes, counts)},
    }


def inspect(source: str | os.PathLike[str], split: str = "train", **options: Any) -> dict[str, Any]:
    """Description of one split of a source, plus its cache folder (None for built-in sources)."""
    if is_builtin(source):
        return {"source": str(source), "split": split, **describe(load(source, split, **options)), "cache_path": None}
    splits, entry, _ = load_splits(source, **options)
    ds = pick_split(splits, split, source)
    return {"source": str(source), "split": split, **describe(ds), "cache_path": str(entry)}


def prepare(source: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Decode every split of a source into the cache (a no-op when cached; see "decoded") and time it."""
    start = time.perf_counter()
    if is_builtin(source):
        splits, entry, decoded = {s: load(source, s, **options) for s in BUILTIN_SPLITS}, None, True
    else:
        splits, entry, decoded = load_splits(source, **options)
    return {
        "source": str(source),
        "cache_path": None if entry is None else str(entry),
        "splits": {name: {"n": len(ds), "image_shape": list(ds.images.shape[1:])} for name, ds in sorted(splits.items())},
        "classes": len(next(iter(splits.values())).classes),
        "decoded": decoded,
        "seconds": round(time.perf_counter() - start, 3),
    }
