"""What `r18lab data inspect|prepare` report: a split's shape and classes, how the source was read (layout,
resize policy, channels, files not read, images skipped), and decode-all-splits timing."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .builtin import BUILTIN_SPLITS
from .dataset import Dataset
from .imagefile import DEFAULT_RESIZE
from .loading import Wanted, is_builtin, load, load_many, load_splits, names_of
from .sources import path_options

RESIZE_HELP = {
    "squash": "bilinear to image_size × image_size, aspect ratio not kept",
    "shorter_side": "shorter side to image_size (bilinear), then the centre image_size × image_size square",
}


def describe(ds: Dataset) -> dict[str, Any]:
    """n, image shape (H, W, C), classes and per-class counts of a Dataset."""
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    return {
        "n": len(ds),
        "image_shape": list(ds.images.shape[1:]),
        "classes": list(ds.classes),
        "class_counts": {cls: int(c) for cls, c in zip(ds.classes, counts)},
    }


def resize_policy(options: dict[str, Any]) -> str:
    """The resize policy in words, the default named as such."""
    size, policy = options.get("image_size"), options.get("resize", DEFAULT_RESIZE)
    if size is None:
        return ("none: images are kept at their size (all must match); set data.image_size=N to resize, by "
                f"data.resize={DEFAULT_RESIZE} (default) or shorter_side")
    default = " (the default; data.resize=shorter_side keeps the aspect ratio)" if policy == DEFAULT_RESIZE else ""
    return f"{policy}: {RESIZE_HELP[policy]}{default}; training may add augment.random_resized_crop"


def inspect(source: str | os.PathLike[str], split: Wanted = "train", **options: Any) -> dict[str, Any]:
    """Description of one split (or several concatenated) of a source, plus its cache folder (None for built-in
    sources) and how it was read."""
    if is_builtin(source):
        ds = load(source, split, **options)
        return {"source": str(source), "split": split, **describe(ds), "cache_path": None,
                "splits": list(BUILTIN_SPLITS), "channels": int(ds.images.shape[-1])}
    decode, select = path_options(options)
    loaded = load_splits(source, wanted=names_of([split]), exclude=select.exclude_classes, **decode.__dict__)
    ds = load_many(source, [split], **options)[0]
    offer = loaded.offer
    meta = loaded.meta
    layout = meta.get("layout", {})
    if offer.auto:
        seed = 0 if select.split_seed is None else select.split_seed
        reading = f"no split level: auto split (test_fraction {select.test_fraction:g}, seed {seed})"
    else:
        reading = "split folders" if layout.get("kind") == "imagefolder" else layout.get("kind", "cached")
    ignored = meta.get("ignored") or {"count": 0, "examples": []}
    bad = meta.get("bad_images") or []
    return {"source": str(source), "split": split, **describe(ds), "cache_path": str(loaded.entry),
            "splits": offer.choices, "layout": reading, "resize": resize_policy(options),
            "channels": int(ds.images.shape[-1]), "not_images": ignored,
            "skipped_images": {"count": len(bad), "examples": bad[:5]}}


def prepare(source: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Decode every split of a source into the cache (a no-op when cached; see "decoded") and time it."""
    start = time.perf_counter()
    if is_builtin(source):
        splits, entry, decoded = dict(zip(BUILTIN_SPLITS, load_many(source, list(BUILTIN_SPLITS), **options))), None, True
    else:
        decode, select = path_options(options)
        loaded = load_splits(source, **decode.__dict__)
        entry, decoded = loaded.entry, loaded.decoded
        choices = loaded.offer.choices
        splits = dict(zip(choices, load_many(source, choices, **options)))
    return {
        "source": str(source),
        "cache_path": None if entry is None else str(entry),
        "splits": {name: {"n": len(ds), "image_shape": list(ds.images.shape[1:])} for name, ds in sorted(splits.items())},
        "classes": len(next(iter(splits.values())).classes),
        "decoded": decoded,
        "seconds": round(time.perf_counter() - start, 3),
    }
