"""Where datasets come from: named built-in sources and the file layouts a path may hold."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Protocol

from ..errors import DataError
from ..registry import Registry
from .builtin import digits, synthetic
from .cifar import CifarCollector
from .dataset import Dataset
from .folder import ImageFolderCollector
from .imagefile import check_image_size
from .members import iter_members

SOURCES: Registry = Registry("data source")
"""Built-in sources by name: fn(split, **options) -> Dataset."""
SOURCES.register("digits")(digits)
SOURCES.register("synthetic")(synthetic)

PATH_OPTIONS = ("image_size",)
"""Options every path source accepts."""


class Collector(Protocol):
    """Receives the files of one pass it claims and turns them into per-split Datasets."""

    def claims(self, relpath: str) -> bool: ...

    def add(self, relpath: str, data: bytes) -> None: ...

    def result(self, where: str, image_size: int | None) -> dict[str, Dataset] | None: ...


LAYOUTS: Registry = Registry("dataset layout")
"""File layouts a path may hold, by name: fn(image_size) -> Collector; the first that claims a file gets it."""
LAYOUTS.register("cifar")(lambda image_size: CifarCollector())
LAYOUTS.register("imagefolder")(lambda image_size: ImageFolderCollector(image_size=image_size))


def builtin_options(name: str, options: dict[str, Any]) -> None:
    """DataError if options holds a keyword the built-in source does not take."""
    params = [p for p in inspect.signature(SOURCES.get(name)).parameters if p != "split"]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise DataError(f"source {name!r} has no option {unknown[0]!r}; its options are: {', '.join(params)}")


def path_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validated options for a path source (image_size only)."""
    unknown = sorted(set(options) - set(PATH_OPTIONS))
    if unknown:
        raise DataError(f"a dataset path takes no option {unknown[0]!r}; its options are: {', '.join(PATH_OPTIONS)}")
    return {"image_size": check_image_size(options.get("image_size"))}


def read_path(path: Path, image_size: int | None = None) -> dict[str, Dataset]:
    """Decode every split under a directory or inside a tar archive in one sequential pass."""
    collectors = {name: LAYOUTS.get(name)(image_size) for name in LAYOUTS.names()}
    for relpath, read in iter_members(path):
        for collector in collectors.values():
            if collector.claims(relpath):
                collector.add(relpath, read())
                break
    results = {name: c.result(str(path), image_size) for name, c in collectors.items()}
    found = {name: splits for name, splits in results.items() if splits}
    if not found:
        raise DataError(
            f"no images or CIFAR batches in {path}; expected [top/]<split>/<class>/*.jpg|png or an official CIFAR folder/archive"
        )
    if len(found) > 1:
        raise DataError(f"{path} holds several dataset layouts ({', '.join(sorted(found))}); point at one of them")
    return next(iter(found.values()))
