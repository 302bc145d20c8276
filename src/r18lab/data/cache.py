"""Decode cache: each path source decoded once into memory-mapped .npy files, written atomically.

An entry is a folder `<root>/<name>-<hash>/` holding `meta.json` and, per split, `<split>.images.npy`
(uint8 N×H×W×C, opened with mmap) and `<split>.labels.npy` (int64). The hash covers the source's
identity: absolute path, total size, latest mtime, file count, options and CACHE_FORMAT. An entry is
built in a hidden `.partial-` folder and renamed into place, so a killed decode never leaves a
half-written entry; an entry that fails its checks (missing file, wrong shape, bad labels) is rebuilt.
Processes loading the same new source at once take a file lock, so one decodes and the others wait.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: concurrent first loads each decode; the rename still keeps entries whole
    fcntl = None  # type: ignore[assignment]

import numpy as np

from ..errors import DataError
from .dataset import Dataset

CACHE_FORMAT = 1
CACHE_ENV = "R18LAB_CACHE"
BAD_IMAGES_FILE = "bad_images.txt"


def cache_root() -> Path:
    """The cache folder: $R18LAB_CACHE, else ~/.cache/r18lab."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "r18lab"


def source_identity(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """What a cached decode of path depends on: location, size, mtime, file count, options, format."""
    path = path.resolve()
    if path.is_dir():
        stats = [_stat(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files]
    else:
        stats = [path.stat()]
    return {
        "path": str(path),
        "size": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        "files": len(stats),
        "options": {k: options[k] for k in sorted(options)},
        "format": CACHE_FORMAT,
    }


def _stat(path: str) -> os.stat_result:
    """stat of a file, or of the link itself when it is a dangling symlink (reading it reports the problem)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return os.lstat(path)


def entry_dir(identity: dict[str, Any]) -> Path:
    """The cache folder of one source identity."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / f"{Path(identity['path']).name}-{digest}"


def open_entry(entry: Path, identity: dict[str, Any]) -> dict[str, Dataset] | None:
    """All splits of a valid entry as mmap-backed Datasets; None if the entry is missing or fails a check."""
    opened = open_entry_meta(entry, identity)
    return None if opened is None else opened[0]


def open_entry_meta(entry: Path, identity: dict[str, Any]) -> tuple[dict[str, Dataset], dict[str, Any]] | None:
    """(all splits, meta.json) of a valid entry; None if the entry is missing or fails a check. meta may hold
    `names` (each split's files), `layout`, `bad_images` (skipped as undecodable) and `ignored` (not images)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("identity") != identity:
            return None
        return {split: _open_split(entry, split, info) for split, info in meta["splits"].items()}, meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _open_split(entry: Path, split: str, info: dict[str, Any]) -> Dataset:
    """One split of an entry; ValueError if a file disagrees with meta.json."""
    images = np.load(entry / f"{split}.images.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(entry / f"{split}.labels.npy", allow_pickle=False)
    classes = list(info["classes"])
    if images.dtype != np.uint8 or list(images.shape) != info["shape"] or images.ndim != 4:
        raise ValueError(f"images of {split} do not match meta.json")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ValueError(f"labels of {split} do not match meta.json")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels of {split} out of range")
    return Dataset(images, labels, classes, info["name"])


def write_entry(entry: Path, identity: dict[str, Any], splits: dict[str, Dataset],
                extra: dict[str, Any] | None = None) -> None:
    """Write all splits to entry atomically, replacing a stale or corrupt one; `extra` joins meta.json, and its
    `bad_images` list is also written as bad_images.txt (one file per line)."""
    partial = entry.parent / f".partial-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        _sweep_partials(entry)
        partial.mkdir()
        meta: dict[str, Any] = {"identity": identity, "splits": {}, **(extra or {})}
        if meta.get("bad_images"):
            (partial / BAD_IMAGES_FILE).write_text("".join(f"{name}\n" for name in meta["bad_images"]))
        for split, ds in splits.items():
            np.save(partial / f"{split}.images.npy", np.ascontiguousarray(ds.images), allow_pickle=False)
            np.save(partial / f"{split}.labels.npy", ds.labels.astype(np.int64), allow_pickle=False)
            meta["splits"][split] = {"shape": list(ds.images.shape), "classes": list(ds.classes), "name": ds.name}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            shutil.rmtree(entry)
        try:
            os.rename(partial, entry)
        except OSError:
            if open_entry(entry, identity) is None:  # not a concurrent writer's finished entry
                raise
    except OSError as exc:
        raise DataError(
            f"cannot write the decode cache at {entry} ({exc}); set {CACHE_ENV} to a writable folder or pass cache=False"
        ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def entry_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock for building entry (released by the OS if the holder dies)."""
    if fcntl is None:
        yield
        return
    try:
        (entry.parent / ".locks").mkdir(parents=True, exist_ok=True)
        handle = open(entry.parent / ".locks" / entry.name, "a")
    except OSError as exc:
        raise DataError(
            f"cannot write the decode cache at {entry.parent} ({exc}); set {CACHE_ENV} to a writable folder or pass cache=False"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sweep_partials(entry: Path) -> None:
    """Remove partial folders of this entry whose writing process is gone (a killed decode)."""
    for partial in entry.parent.glob(f".partial-{entry.name}-*"):
        pid = partial.name[len(f".partial-{entry.name}-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    """True if a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- what is in the cache, and clearing it ---------------------------------------------------------------------
def folder_size(path: Path) -> int:
    """Bytes of the files under path (0 if it vanished meanwhile)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def list_entries(root: Path | None = None) -> list[dict[str, Any]]:
    """Every folder in the cache root: decode entries (`kind` decode: the source, its options, splits, size),
    half-written ones (`partial`) and other caches kept there (`other`, e.g. probe features), largest first."""
    root = cache_root() if root is None else root
    rows = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or path.name == ".locks":
            continue
        row: dict[str, Any] = {"entry": path.name, "path": str(path), "kind": "other", "source": None,
                               "size_bytes": folder_size(path)}
        if path.name.startswith(".partial-"):
            row["kind"] = "partial"
        else:
            try:
                meta = json.loads((path / "meta.json").read_text())
                ident = meta["identity"]
                row.update(kind="decode", source=ident["path"], options=ident.get("options", {}),
                           splits={k: v["shape"][0] for k, v in meta["splits"].items()})
            except (OSError, ValueError, KeyError, TypeError):
                pass
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["size_bytes"], r["entry"]))


def matching_entries(rows: list[dict[str, Any]], source: str | None, everything: bool = False) -> list[dict[str, Any]]:
    """The rows `clear` deletes: decode and partial entries (every folder with `everything`), of `source` only
    when given (an entry name, or the path of the source: entries of every option set)."""
    kinds = ("decode", "partial", "other") if everything else ("decode", "partial")
    if source is None:
        return [r for r in rows if r["kind"] in kinds]
    want = {source, str(Path(source).expanduser().absolute())}
    with contextlib.suppress(OSError):
        want.add(str(Path(source).expanduser().resolve()))
    return [r for r in rows if r["entry"] in want or (r["source"] is not None and r["source"] in want)]


def remove_entry(path: Path) -> bool:
    """Delete one cache folder, holding its lock so that no decode is writing it meanwhile; a half-written
    folder of a process still running is kept (False)."""
    if path.name.startswith(".partial-"):
        pid = path.name.rsplit("-", 2)[-2] if path.name.count("-") >= 3 else ""
        if pid.isdigit() and _alive(int(pid)):
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True
    if not (path / "meta.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        return True
    with entry_lock(path):
        shutil.rmtree(path, ignore_errors=True)
    return True
