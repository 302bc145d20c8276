"""Download an official CIFAR archive: stream to a temp file, check its md5, rename into place."""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..registry import Registry


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: file name, official URL, md5 of its bytes."""

    filename: str
    url: str
    md5: str


ARCHIVES: Registry = Registry("CIFAR archive")
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/"
ARCHIVES.register("cifar10")(
    Archive("cifar-10-python.tar.gz", OFFICIAL_URL + "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
)
ARCHIVES.register("cifar100")(
    Archive("cifar-100-python.tar.gz", OFFICIAL_URL + "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")
)

CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """Hex md5 of a file's bytes."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar(
    name: str, root: str | os.PathLike[str], url: str | None = None, md5: str | None = None, timeout: float = 60.0
) -> Path:
    """Fetch ARCHIVES[name] (cifar10 | cifar100) into root unless a copy with the right md5 is there; return its path."""
    if name not in ARCHIVES:
        raise DataError(f"unknown CIFAR archive {name!r}; choose one of: {', '.join(ARCHIVES.names())}")
    archive: Archive = ARCHIVES.get(name)
    url, md5 = url or archive.url, (md5 or archive.md5).lower()
    root = Path(root).expanduser()
    target = root / archive.filename
    if target.is_file() and file_md5(target) == md5:
        return target
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.filename}.", suffix=".part", dir=root)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(
                f"download of {url} has md5 {digest.hexdigest()}, expected {md5}; the transfer was corrupted or the URL "
                "serves another file: retry, or check url/md5"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DataError(f"cannot download {url} ({exc}); check the connection, or fetch it by hand into {target}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
