"""`load(source, split)`: a built-in name or a path, decoded once and then read from the cache.

For a path, the layout is read from the member names first (layout.py), so a split or class that is not there
is one line in seconds, before any decode and without a cache entry. Splits are then chosen from the decoded
ones: a name, several concatenated (a list, e.g. leave-one-domain-out), or `train`/`test` of the auto split of
an un-split folder; `exclude_classes` drops classes by name (labels re-indexed over the rest)."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataError
from .autosplit import saved_auto_split
from .builtin import BUILTIN_SPLITS
from .cache import BAD_IMAGES_FILE, entry_dir, entry_lock, open_entry_meta, source_identity, write_entry
from .dataset import Dataset
from .imagefile import BadImageError, channels_of, check_channels, with_channels
from .layout import ALL, AUTO_SPLITS, Offer, Scan, SelectionError, check_choices, check_classes, scan
from .sources import (GENERIC_OPTIONS, SOURCES, DecodeOptions, Decoded, SelectOptions, builtin_options, path_options,
                      read_path, select_options)

Wanted = str | Sequence[str]
"""A split name, or several (concatenated in that order)."""


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
    """Every split of a path source (split ALL for an un-split folder), the cache entry holding them (None if
    uncached), whether it was decoded now, and what the decode recorded (names, layout, bad_images, ignored)."""

    splits: dict[str, Dataset]
    entry: Path | None
    decoded: bool
    meta: dict[str, Any] = {}

    @property
    def offer(self) -> Offer:
        return offer_of(self.splits, self.meta)


def offer_of(splits: dict[str, Dataset], meta: dict[str, Any]) -> Offer:
    """What decoded splits offer: their names (the auto split's for an un-split folder) and classes."""
    classes = list(next(iter(splits.values())).classes) if splits else []
    return Offer(sorted(splits), classes, not meta.get("layout", {}).get("split_level", True))


def names_of(wanted: Sequence[Wanted]) -> list[str]:
    """Every split name in `wanted`, in order, once."""
    out: list[str] = []
    for w in wanted:
        for name in ([w] if isinstance(w, str) else list(w)):
            if name not in out:
                out.append(name)
    return out


def load_splits(source: str | os.PathLike[str], *, cache: bool = True, wanted: Sequence[str] = (),
                exclude: Sequence[str] = (), **options: Any) -> Loaded:
    """Every split of a path source, decoding it into the cache unless a valid entry is there. The `wanted`
    split names and `exclude`d classes are checked first: against the entry, else against the member names
    (no decode, no entry written when one is not there)."""
    path = existing_path(source)
    opts = DecodeOptions(**options) if options else DecodeOptions()
    if not cache:
        found = scan(path, opts.split_mode)
        check_choices(found.offer, wanted, exclude, source)
        decoded = _decode(path, found, opts)
        _note_decode(decoded, path, None)
        return Loaded(_named(decoded.splits, path), None, True, _extra(decoded))
    identity = source_identity(path, opts.identity())
    entry = entry_dir(identity)
    opened = open_entry_meta(entry, identity)
    if opened is None:
        found = scan(path, opts.split_mode)  # names only: a wrong split or class fails here, nothing written
        check_choices(found.offer, wanted, exclude, source)
        with entry_lock(entry):  # another process may be decoding the same source: wait, then look again
            opened = open_entry_meta(entry, identity)
            if opened is None:
                decoded = _decode(path, found, opts)
                write_entry(entry, identity, _named(decoded.splits, path), _extra(decoded))
                _note_decode(decoded, path, entry)
                opened = open_entry_meta(entry, identity)
                if opened is None:
                    raise DataError(f"the decode cache at {entry} was unreadable right after writing; check the disk "
                                    "or pass cache=False")
                return _checked(Loaded(opened[0], entry, True, opened[1]), opts, source)
    return _checked(Loaded(opened[0], entry, False, opened[1]), opts, source, wanted, exclude)


def _decode(path: Path, found: Scan, opts: DecodeOptions) -> Decoded:
    """One decode pass over path, as its Scan found it."""
    return read_path(path, found=found, image_size=opts.image_size, resize=opts.resize, channels=opts.channels,
                     split_mode=opts.split_mode, on_bad_image=opts.on_bad_image)


def _extra(decoded: Decoded) -> dict[str, Any]:
    """What an entry's meta.json keeps besides the arrays."""
    return {"layout": decoded.layout, "names": decoded.names, "bad_images": decoded.bad,
            "ignored": {"count": len(decoded.ignored), "examples": decoded.ignored[:5]}}


def _checked(loaded: Loaded, opts: DecodeOptions, source: object, wanted: Sequence[str] = (),
             exclude: Sequence[str] = ()) -> Loaded:
    """loaded, after checking the wanted names (cached entries) and the bad-image policy."""
    check_choices(loaded.offer, wanted, exclude, source)
    bad = loaded.meta.get("bad_images") or []
    if bad and opts.on_bad_image != "skip":
        raise BadImageError(f"cannot decode image {bad[0]} ({len(bad)} such files, listed in "
                            f"{loaded.entry}/{BAD_IMAGES_FILE}); replace or remove them, or set data.on_bad_image=skip")
    return loaded


def _note_decode(decoded: Decoded, path: Path, entry: Path | None) -> None:
    """One line each on stderr for files that are not images and images skipped as undecodable."""
    if decoded.ignored and decoded.layout.get("kind") == "imagefolder":
        shown = ", ".join(decoded.ignored[:3]) + (", …" if len(decoded.ignored) > 3 else "")
        print(f"note: {len(decoded.ignored)} file(s) in {path} have no image extension and were not read: {shown}",
              file=sys.stderr, flush=True)
    if decoded.bad:
        shown = ", ".join(decoded.bad[:3]) + (", …" if len(decoded.bad) > 3 else "")
        where = f"; all listed in {entry / BAD_IMAGES_FILE}" if entry is not None else ""
        print(f"note: skipped {len(decoded.bad)} image(s) of {path} that do not decode (data.on_bad_image=skip): "
              f"{shown}{where}", file=sys.stderr, flush=True)


def load(source: str | os.PathLike[str], split: Wanted = "train", *, cache: bool = True, **options: Any) -> Dataset:
    """One split of a source — a built-in name (digits, synthetic) or a folder / .tar(.gz) / CIFAR archive path —
    or several concatenated (a list of names). Options: the source's own (built-in), or image_size, resize,
    channels, split_mode (data.split), on_bad_image, test_fraction, split_seed, exclude_classes (path)."""
    return load_many(source, [split], cache=cache, **options)[0]


def load_many(source: str | os.PathLike[str], wanted: Sequence[Wanted], *, cache: bool = True,
              **options: Any) -> list[Dataset]:
    """Several selections of one source at once (e.g. [train_split, test_split]): every name is checked before
    anything is decoded, and the source is decoded once."""
    names = names_of(wanted)
    if is_builtin(source):
        splits, select = _builtin_splits(str(source), names, dict(options))
        offer = Offer(sorted(splits), list(next(iter(splits.values())).classes), False)
    else:
        existing_path(source)  # a missing path is named before its options are judged
        decode, select = path_options(options)
        loaded = load_splits(source, cache=cache, wanted=names, exclude=select.exclude_classes,
                             **decode.__dict__)
        splits, offer = loaded.splits, loaded.offer
        if offer.auto:
            splits = _auto_splits(loaded, select)
    check_classes(offer.classes or [], select.exclude_classes, source)
    return [choose(splits, w, source, select.exclude_classes) for w in wanted]


def _builtin_splits(name: str, names: list[str], options: dict[str, Any]) -> tuple[dict[str, Dataset], SelectOptions]:
    """The named splits of a built-in source, with the generic options (channels, exclude_classes) applied."""
    generic = {k: options.pop(k) for k in GENERIC_OPTIONS if k in options}
    builtin_options(name, options)
    missing = [n for n in names if n not in BUILTIN_SPLITS]
    if missing:
        raise SelectionError(f"source {name!r} has no split {missing[0]!r}; choose one of: {', '.join(BUILTIN_SPLITS)}")
    splits = {n: SOURCES.get(name)(n, **options) for n in names}
    count = channels_of([ds.images for ds in splits.values()], check_channels(generic.get("channels", 3)))
    for ds in splits.values():
        ds.images = with_channels(ds.images, count)
    return splits, select_options({"exclude_classes": generic.get("exclude_classes")})


def _auto_splits(loaded: Loaded, select: SelectOptions) -> dict[str, Dataset]:
    """train/test of an un-split folder's ALL array, by the saved (or a new) auto split."""
    every = loaded.splits[ALL]
    names = (loaded.meta.get("names") or {}).get(ALL, [])
    seed = 0 if select.split_seed is None else select.split_seed
    rows = saved_auto_split(loaded.entry, names, every.labels, every.classes, select.test_fraction, seed)
    base = every.name.rsplit(":", 1)[0]
    return {s: Dataset(every.images[rows[s]], every.labels[rows[s]], list(every.classes), f"{base}:{s}")
            for s in AUTO_SPLITS}


def choose(splits: dict[str, Dataset], wanted: Wanted, source: object, exclude: Sequence[str] = ()) -> Dataset:
    """One split, or several concatenated (their present classes must agree), less the excluded classes."""
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    parts = [pick_split(splits, n, source) for n in names]
    if len(parts) > 1:
        _check_same_classes(parts, names, source)
        ds = Dataset(np.concatenate([np.asarray(p.images) for p in parts]), np.concatenate([p.labels for p in parts]),
                     list(parts[0].classes), f"{parts[0].name.rsplit(':', 1)[0]}:{'+'.join(names)}")
    else:
        ds = parts[0]
    return without_classes(ds, exclude) if exclude else ds


def _check_same_classes(parts: list[Dataset], names: list[str], source: object) -> None:
    """SelectionError when concatenated splits do not hold the same classes."""
    if any(list(p.classes) != list(parts[0].classes) for p in parts):
        raise SelectionError(f"splits {', '.join(names)} of {source} name different classes; concatenate splits "
                             "of one dataset")
    present = [set(np.unique(p.labels).tolist()) for p in parts]
    for name, have in zip(names, present):
        lacking = sorted(set().union(*present) - have)
        if lacking:
            missing = ", ".join(parts[0].classes[k] for k in lacking[:5])
            raise SelectionError(f"split {name!r} of {source} has no images of class {missing} that the other "
                                 f"listed splits ({', '.join(n for n in names if n != name)}) have; list splits with "
                                 "the same classes, or drop such classes with data.exclude_classes")


def without_classes(ds: Dataset, exclude: Sequence[str]) -> Dataset:
    """ds without the images of the excluded classes, labels re-indexed over the remaining classes (in order)."""
    drop = {ds.classes.index(c) for c in exclude}
    keep_classes = [c for k, c in enumerate(ds.classes) if k not in drop]
    remap = np.full(len(ds.classes), -1, np.int64)
    remap[[k for k in range(len(ds.classes)) if k not in drop]] = np.arange(len(keep_classes))
    rows = np.flatnonzero(remap[ds.labels] >= 0)
    return Dataset(ds.images[rows], remap[ds.labels[rows]], keep_classes, ds.name)


def pick_split(splits: dict[str, Dataset], split: str, source: object) -> Dataset:
    """splits[split], or SelectionError listing the splits there are."""
    if split not in splits:
        raise SelectionError(f"{source} has no split {split!r}; available: {', '.join(sorted(splits))}")
    return splits[split]


def _named(splits: dict[str, Dataset], path: Path) -> dict[str, Dataset]:
    """Rename each split's Dataset to '<file name>:<split>'."""
    for split, ds in splits.items():
        ds.name = f"{path.name}:{split}"
    return splits
