"""Seeded index subsets that depend only on (labels, seed): nested pools, k-shot sets, class halves."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import DataError


def _class_orders(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """For each class present (ascending), its indices in a seeded random order."""
    return [rng.permutation(np.flatnonzero(labels == cls)) for cls in np.unique(labels)]


def _labels(labels: np.ndarray) -> np.ndarray:
    """labels as a 1-D int64 array; DataError otherwise."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64, copy=False)


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices in an order whose every prefix is as class-balanced as possible (seeded round-robin)."""
    labels = _labels(labels)
    rng = np.random.default_rng(seed)
    orders = _class_orders(labels, rng)
    if not orders:
        return np.zeros(0, np.int64)
    index = np.concatenate(orders)
    rank = np.concatenate([np.arange(len(o)) for o in orders])
    tie = rng.random(len(index))  # which classes get the extra example varies by round
    return index[np.lexsort((tie, rank))].astype(np.int64)


def nested_pools(labels: np.ndarray, sizes: list[int], seed: int, balanced: bool = True) -> list[np.ndarray]:
    """Sorted index pools of the given increasing sizes, pool k ⊂ pool k+1; class-balanced or uniform."""
    labels = _labels(labels)
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes) or any(a >= b for a, b in zip(sizes, sizes[1:])):
        raise DataError(f"pool sizes must be positive and strictly increasing, got {sizes}")
    if sizes[-1] > len(labels):
        raise DataError(f"pool size {sizes[-1]} exceeds the {len(labels)} examples; pass smaller sizes")
    if balanced:
        counts = np.bincount(labels)[np.unique(labels)]
        limit = int(counts.min()) * len(counts)
        if sizes[-1] > limit:
            raise DataError(
                f"a class-balanced pool of {sizes[-1]} is impossible: the smallest class has {counts.min()} examples "
                f"(at most {limit} over {len(counts)} classes); pass smaller sizes or balanced=False"
            )
        order = balanced_order(labels, seed)
    else:
        order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(order[:s]).astype(np.int64) for s in sizes]


def k_shot(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted indices of k seeded examples per class; k_shot(k) ⊂ k_shot(k+1) for one seed."""
    labels = _labels(labels)
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    orders = _class_orders(labels, np.random.default_rng(seed))
    short = [(int(labels[o[0]]), len(o)) for o in orders if len(o) < k]
    if short:
        raise DataError(f"class {short[0][0]} has only {short[0][1]} examples, fewer than k={k}; pass a smaller k")
    return np.sort(np.concatenate([o[:k] for o in orders])).astype(np.int64)


def class_halves(num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(num_classes) into two sorted halves; the first has num_classes // 2."""
    if num_classes < 2:
        raise DataError(f"class_halves needs at least 2 classes, got {num_classes}")
    perm = np.random.default_rng(seed).permutation(num_classes)
    half = num_classes // 2
    return np.sort(perm[:half]).astype(np.int64), np.sort(perm[half:]).astype(np.int64)


def save_split(path: str | os.PathLike[str], split: dict[str, np.ndarray]) -> None:
    """Write named index arrays as JSON atomically (temp file + os.replace)."""
    payload = {name: [int(i) for i in np.asarray(idx).ravel()] for name, idx in split.items()}
    atomic_write_text(path, json.dumps(payload))


def load_split(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read named int64 index arrays written by save_split; DataError for a missing or malformed file."""
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist; create it with save_split or check the path") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"split file {path} is not valid JSON ({exc}); re-create it with save_split") from None
    if not isinstance(payload, dict) or not all(
        isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v) for v in payload.values()
    ):
        raise DataError(f"split file {path} must map names to lists of integer indices; re-create it with save_split")
    return {name: np.array(v, dtype=np.int64) for name, v in payload.items()}
