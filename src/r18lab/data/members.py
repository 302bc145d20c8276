"""Walk the files of a directory or a .tar/.tar.gz archive in one sequential pass."""
from __future__ import annotations

import os
import stat
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
    """Yield the files under a directory or the regular files inside a tar archive, skipping hidden ones.

    In a directory, a claimed file that is not a readable regular file is refused with one line (see read_regular)."""
    members = _iter_directory(path) if path.is_dir() else _iter_tar(path)
    return (m for m in members if not is_hidden(m[0]))


def _iter_directory(root: Path) -> Iterator[Member]:
    """Files under root in sorted order; reading one that is not a regular file raises DataError."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            relpath = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
            yield relpath, (lambda full=full: read_regular(Path(full)))


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file (or a symlink to one).

    A dataset file that cannot be read is refused with one line rather than skipped, so a dataset never
    silently loses images: a dangling symlink, a FIFO, socket or device (opened non-blocking, so a FIFO
    without a writer cannot hang the scan), or a file without read permission. Files no layout claims
    (non-images, hidden files) are never opened, whatever their type.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"dataset file {path} is a symlink to {os.readlink(path)}, which does not exist; "
                            "restore its target or remove the link") from None
        raise DataError(f"dataset file {path} disappeared while reading the dataset; do not change it while loading") from None
    except OSError as exc:
        raise DataError(f"cannot read dataset file {path} ({exc.strerror}); fix its permissions or remove it") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"dataset file {path} is not a regular file ({_kind(mode)}); "
                            "replace it with the image file or remove it")
        try:
            return fh.read()
        except OSError as exc:
            raise DataError(f"cannot read dataset file {path} ({exc.strerror}); replace or remove it") from None


def _kind(mode: int) -> str:
    """A file type in words."""
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return word
    return "not a regular file"


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
