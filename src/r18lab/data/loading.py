"""`load(source, split)`: a built-in name or a path, decoded once and then read from the cache."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import DataError
from .cache import entry_dir, entry_lock, open_entry, source_identity, write_entry
from .dataset import Dataset
from .sources import SOURCES, builtin_options, path_options, read_path


def is_builtin(source: str | os.PathLike[str]) -> bool:
    """True if source names a built-in source (a built-in name wins over a same-named relative path)."""
    return isinstance(source, str) and source in SOURCES


def existing_path(source: str | os.PathLike[str]) -> Path:
    """source as an absolute Path; DataError if nothing is there."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset path {path} does not exist; pass a folder, a .tar/.tar.gz archive, "
            f"or a built-in source ({', '.join(SOURCES.names())})"
        )
    return path.resolve()


class Loaded(NamedTuple):
    """Every split of a path source, the cache entry holding them (None if uncached), whether it was decoded now."""

    splits: dict[str, Dataset]
    entry: Path | None
    decoded: bool


def load_splits(source: str | os.PathLike[str], *, cache: bool = True, **options: Any) -> Loaded:
    """Every split of a path source, decoding it into the cache unless a valid entry is there."""
    path = existing_path(source)
    options = path_options(options)
    if not cache:
        return Loaded(_named(read_path(path, **options), path), None, True)
    identity = source_identity(path, options)
    entry = entry_dir(identity)
    splits = open_entry(entry, identity)
    if splits is not None:
        return Loaded(splits, entry, False)
    with entry_lock(entry):  # another process may be decoding the same source: wait, then look again
        splits = open_entry(entry, identity)
        if splits is not None:
            return Loaded(splits, entry, False)
        write_entry(entry, identity, _named(read_path(path, **options), path))
    splits = open_entry(entry, identity)
    if splits is None:
        raise DataError(f"the decode cache at {entry} was unreadable right after writing; check the disk or pass cache=False")
    return Loaded(splits, entry, True)


def load(source: str | os.PathLike[str], split: str = "train", *, cache: bool = True, **options: Any) -> Dataset:
    """One split of a source: a built-in name (digits, synthetic) or a folder / .tar(.gz) / CIFAR archive path."""
    if is_builtin(source):
        builtin_options(str(source), options)
        return SOURCES.get(str(source))(split, **options)
    return pick_split(load_splits(source, cache=cache, **options).splits, split, source)


def pick_split(splits: dict[str, Dataset], split: str, source: object) -> Dataset:
    """splits[split], or DataError listing the splits there are."""
    if split not in splits:
        raise DataError(f"{source} has no split {split!r}; available: {', '.join(sorted(splits))}")
    return splits[split]


def _named(splits: dict[str, Dataset], path: Path) -> dict[str, Dataset]:
    """Rename each split's Dataset to '<file name>:<split>'."""
    for split, ds in splits.items():
        ds.name = f"{path.name}:{split}"
    return splits
