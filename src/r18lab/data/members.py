"""Walk the files of a directory or a .tar/.tar.gz archive in one sequential pass."""
from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import DataError

Member = tuple[str, Callable[[], bytes]]
"""(path relative to the root with '/' separators, a function reading the file's bytes)."""


def is_hidden(relpath: str) -> bool:
    """True for files a dataset never contains: dot-files and macOS resource forks."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relpath.split("/"))


def iter_members(path: Path) -> Iterator[Member]:
    """Yield the regular files under a directory or inside a tar archive, skipping hidden ones."""
    members = _iter_directory(path) if path.is_dir() else _iter_tar(path)
    return (m for m in members if not is_hidden(m[0]))


def _iter_directory(root: Path) -> Iterator[Member]:
    """Regular files under root in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            relpath = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
            yield relpath, (lambda full=full: Path(full).read_bytes())


def _iter_tar(archive: Path) -> Iterator[Member]:
    """Regular files of a (compressed) tar in archive order; a broken archive raises DataError."""
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for info in tar:
                if info.isfile():
                    fileobj = tar.extractfile(info)
                    yield _strip_dot(info.name), _guarded(archive, fileobj.read)  # type: ignore[union-attr]
    except _TAR_ERRORS as exc:
        raise _broken(archive, exc) from None


_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _strip_dot(name: str) -> str:
    """Archive member name without leading './'."""
    while name.startswith("./"):
        name = name[2:]
    return name


def _guarded(archive: Path, read: Callable[[], bytes]) -> Callable[[], bytes]:
    """Wrap a member reader so a truncated archive surfaces as DataError."""

    def guarded_read() -> bytes:
        try:
            return read()
        except _TAR_ERRORS as exc:
            raise _broken(archive, exc) from None

    return guarded_read


def _broken(archive: Path, exc: BaseException) -> DataError:
    """The DataError for an unreadable archive."""
    return DataError(
        f"cannot read archive {archive} ({exc}); it is not a complete .tar/.tar.gz: re-download or re-create it"
    )
