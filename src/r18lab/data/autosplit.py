"""data.split=auto: a stratified, seeded train/test split of an un-split image folder, saved beside its decode
cache as JSON (the files of each split) and reused.

Each class's files are shuffled by a generator seeded with (seed, the class name), and round(n · test_fraction)
of them (at least one, and at least one left for training, when the class has two or more) go to test. A class's
split therefore depends only on its own files and the seed: excluding another class changes nothing."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import DataError
from .layout import AUTO_SPLITS


def auto_split(labels: np.ndarray, classes: list[str], fraction: float, seed: int) -> dict[str, np.ndarray]:
    """{train, test}: sorted rows of a stratified, seeded split (see the module docstring)."""
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, zlib.crc32(classes[k].encode())])
        rows = rng.permutation(rows)
        n_test = min(max(int(round(len(rows) * fraction)), 1), len(rows) - 1) if len(rows) > 1 else 0
        parts["test"].append(rows[:n_test])
        parts["train"].append(rows[n_test:])
    return {s: np.sort(np.concatenate(parts[s] or [np.zeros(0, np.int64)])).astype(np.int64) for s in AUTO_SPLITS}


def split_file(entry: Path, fraction: float, seed: int) -> Path:
    """Where the auto split of (fraction, seed) is kept inside a cache entry."""
    return entry / f"auto_split-f{fraction:g}-s{seed}.json"


def saved_auto_split(entry: Path | None, names: list[str], labels: np.ndarray, classes: list[str], fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """The auto split's rows: read from the entry's JSON when it is there and still covers exactly these files
    (so a hand-edited file is honoured), else made and written there (nothing written without an entry)."""
    if len(names) != len(labels):
        raise DataError("the decode cache lists fewer file names than images; clear it (r18lab data cache clear) "
                        "and load again")
    path = None if entry is None else split_file(entry, fraction, seed)
    if path is not None and path.is_file():
        rows = _read(path, names)
        if rows is not None:
            return rows
    rows = auto_split(labels, classes, fraction, seed)
    if path is not None:
        payload = {"test_fraction": fraction, "seed": seed, **{s: [names[i] for i in rows[s]] for s in AUTO_SPLITS}}
        try:
            atomic_write_text(path, json.dumps(payload, indent=0))
        except OSError:
            pass  # a read-only cache still trains on the (deterministic) split; it is just not kept
    return rows


def _read(path: Path, names: list[str]) -> dict[str, np.ndarray] | None:
    """Rows of a saved split, or None when the file is unreadable or no longer a partition of `names`."""
    try:
        payload = json.loads(path.read_text())
        index = {name: i for i, name in enumerate(names)}
        rows = {s: np.array(sorted(index[n] for n in payload[s]), dtype=np.int64) for s in AUTO_SPLITS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    together = np.concatenate([rows[s] for s in AUTO_SPLITS])
    if len(together) != len(names) or len(np.unique(together)) != len(names):
        return None
    return rows
