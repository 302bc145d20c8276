"""Explicit index lists: train or predict on exactly the examples a file names.

Accepted files: a JSON list of integers; a JSON object holding the list under "indices" or "train" (what
`r18lab.data.splits.save_split` writes: names → lists); a `.npy` integer array (read with allow_pickle=False);
or text with one integer per line (blank lines and `#` comments ignored). The order is kept as given.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

JSON_KEYS = ("indices", "train")


def read_indices(path: str | os.PathLike[str], n: int, key: str | None = None) -> np.ndarray:
    """int64 indices read from `path`, validated against a dataset of `n` examples (see the module docstring).

    `key` picks the list in a JSON object (default: "indices", else "train"). Every problem is a one-line
    DataError naming the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"index file {path} does not exist; give a .json, .npy or one-integer-per-line text file")
    if path.suffix.lower() == ".npy":
        values = _read_npy(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"index file {path} cannot be read as text ({e}); "
                            "give a .json, .npy or one-integer-per-line text file") from None
        stripped = text.lstrip()
        values = _read_json(path, stripped, key) if stripped[:1] in ("[", "{") else _read_lines(path, text)
    return check_indices(values, n, f"index file {path}")


def check_indices(values: Any, n: int, where: object = "indices") -> np.ndarray:
    """`values` as a 1-D int64 array after checking: integers, in [0, n), no duplicates, not empty."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{where} must be a flat list of indices, got shape {arr.shape}; write one index per entry")
    if arr.size == 0:
        raise DataError(f"{where} is empty; list at least one example index")
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise DataError(f"{where} must hold integers, got {arr.dtype} values; write whole numbers such as 0, 17, 42")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= n))
    if bad.size:
        raise DataError(f"{where} has index {int(arr[bad[0]])} (entry {int(bad[0])}) outside 0..{n - 1} "
                        f"for a dataset of {n} examples; use indices of this dataset and split")
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != arr.size:
        dup = int(uniq[counts > 1][0])
        raise DataError(f"{where} lists index {dup} more than once ({arr.size - uniq.size} duplicates); "
                        "list each example once")
    return arr


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"index file {path} is not a readable .npy integer array ({e}); "
                        "save it with numpy.save(path, np.asarray(indices, dtype=np.int64))") from None


def _read_json(path: Path, text: str, key: str | None) -> list:
    try:
        payload = json.loads(text)
    except ValueError as e:
        raise DataError(f"index file {path} is not valid JSON ({e}); write a JSON list such as [0, 5, 9]") from None
    if isinstance(payload, dict):
        keys = [key] if key is not None else [k for k in JSON_KEYS if k in payload]
        if not keys or keys[0] not in payload:
            wanted = repr(key) if key is not None else " or ".join(repr(k) for k in JSON_KEYS)
            raise DataError(f"index file {path} is a JSON object without {wanted} (it has "
                            f"{', '.join(map(repr, payload)) or 'no keys'}); store the list under \"indices\"")
        payload = payload[keys[0]]
    if not isinstance(payload, list):
        raise DataError(f"index file {path} must hold a JSON list of integers; write e.g. [0, 5, 9]")
    for i, v in enumerate(payload):
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(f"index file {path} entry {i} is {v!r}, not an integer; write whole numbers only")
    return _as_int64(payload, path)


def _read_lines(path: Path, text: str) -> np.ndarray:
    values = []
    for lineno, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            values.append(int(item))
        except ValueError:
            raise DataError(f"index file {path} line {lineno} is {item!r}, not an integer; "
                            "write one whole number per line") from None
    return _as_int64(values, path)


def _as_int64(values: list[int], path: Path) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        raise DataError(f"index file {path} holds an index too large for int64; "
                        "use indices of this dataset and split") from None
