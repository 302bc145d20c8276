"""Where datasets come from: named built-in sources and the file layouts a path may hold."""
from __future__ import annotations

import inspect
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..errors import ConfigError, DataError
from ..registry import Registry
from .builtin import digits, synthetic
from .cifar import CifarCollector
from .dataset import Dataset
from .folder import ImageFolderCollector
from .imagefile import DEFAULT_RESIZE, RESIZE_POLICIES, channels_of, check_channels, check_image_size, with_channels
from .layout import Scan, scan
from .members import iter_members

SOURCES: Registry = Registry("data source")
"""Built-in sources by name: fn(split, **options) -> Dataset."""
SOURCES.register("digits")(digits)
SOURCES.register("synthetic")(synthetic)


@dataclass(frozen=True)
class DecodeOptions:
    """What a path's decode depends on (so its cache entry): size and resize policy, channels, the split reading
    (`split_mode`: None, folders or auto; data.split), and the bad-image policy (not part of the identity: a
    skip-built entry lists its skipped files, and an error-policy load of it reports the first)."""

    image_size: int | None = None
    resize: str = DEFAULT_RESIZE
    channels: int | str = 3
    split_mode: str | None = None
    on_bad_image: str = "error"

    def identity(self) -> dict[str, Any]:
        """The options entering the cache identity: image_size always (as before), the others when not default."""
        out: dict[str, Any] = {"image_size": self.image_size}
        for key, default in (("resize", DEFAULT_RESIZE), ("channels", 3), ("split_mode", None)):
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        if self.image_size is None:
            out.pop("resize", None)  # nothing is resized
        return out


@dataclass(frozen=True)
class SelectOptions:
    """How splits are chosen after the decode: the auto split's test share and seed, classes left out."""

    test_fraction: float = 0.2
    split_seed: int | None = None
    exclude_classes: tuple[str, ...] = field(default_factory=tuple)


PATH_OPTIONS = tuple(DecodeOptions.__dataclass_fields__) + tuple(SelectOptions.__dataclass_fields__)
"""Options every path source accepts."""
GENERIC_OPTIONS = ("channels", "exclude_classes")
"""Options every source accepts, built-in ones too."""


class Collector(Protocol):
    """Receives the files of one pass it claims and turns them into per-split Datasets."""

    def claims(self, relpath: str) -> bool: ...

    def add(self, relpath: str, data: bytes) -> None: ...

    def result(self, where: str, image_size: int | None) -> dict[str, Dataset] | None: ...


LAYOUTS: Registry = Registry("dataset layout")
"""File layouts a path may hold, by the kind a Scan names: fn(scan, DecodeOptions) -> Collector."""
LAYOUTS.register("cifar")(lambda found, opts: CifarCollector())
LAYOUTS.register("imagefolder")(lambda found, opts: ImageFolderCollector(
    layout=found.layout, image_size=opts.image_size, resize=opts.resize, on_bad_image=opts.on_bad_image))


class Decoded(NamedTuple):
    """Every split of a path (split ALL when un-split), each split's file names (image folders), the images
    skipped as undecodable, the files no layout claims, and the layout read."""

    splits: dict[str, Dataset]
    names: dict[str, list[str]]
    bad: list[str]
    ignored: list[str]
    layout: dict[str, Any]


def builtin_options(name: str, options: dict[str, Any]) -> None:
    """DataError if options holds a keyword the built-in source does not take."""
    params = [p for p in inspect.signature(SOURCES.get(name)).parameters if p != "split"]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise DataError(f"source {name!r} has no option {unknown[0]!r}; its options are: {', '.join(params)}")


def path_options(options: dict[str, Any]) -> tuple[DecodeOptions, SelectOptions]:
    """Validated options for a path source (see PATH_OPTIONS), split into decode and selection options."""
    unknown = sorted(set(options) - set(PATH_OPTIONS))
    if unknown:
        raise DataError(f"a dataset path takes no option {unknown[0]!r}; its options are: {', '.join(PATH_OPTIONS)}")
    resize = options.get("resize", DEFAULT_RESIZE)
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"data.resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    on_bad = options.get("on_bad_image", "error")
    if on_bad not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_image must be error or skip, got {on_bad!r}")
    mode = options.get("split_mode")
    if mode not in (None, "auto", "folders"):
        raise ConfigError(f"data.split must be auto or folders (or unset), got {mode!r}")
    decode = DecodeOptions(check_image_size(options.get("image_size")), resize,
                           check_channels(options.get("channels", 3)), mode, on_bad)
    return decode, select_options(options)


def select_options(options: dict[str, Any]) -> SelectOptions:
    """Validated selection options (test_fraction, split_seed, exclude_classes)."""
    fraction = options.get("test_fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"data.test_fraction must be a number between 0 and 1 (exclusive), got {fraction!r}")
    seed = options.get("split_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"data.split_seed must be an integer, got {seed!r}")
    exclude = options.get("exclude_classes") or ()
    if isinstance(exclude, str) or not all(isinstance(c, str) for c in exclude):
        raise ConfigError(f"data.exclude_classes must be a list of class names, e.g. [BACKGROUND_Google]; "
                          f"got {exclude!r}")
    return SelectOptions(float(fraction), seed, tuple(exclude))


class DecodeProgress:
    """A line on stderr at least every `every` seconds of a long decode: files read, of how many, and an ETA."""

    every = 30.0

    def __init__(self, what: str, total: int, clock=time.perf_counter) -> None:
        self.what, self.total, self.clock = what, total, clock
        self.start = self.last = clock()
        self.done = 0

    def step(self) -> None:
        self.done += 1
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        of = f" of {self.total}" if self.total else ""
        eta = (f", eta {(self.total - self.done) * elapsed / self.done:.0f} s" if self.total > self.done else "")
        print(f"decoding {self.what}: {self.done}{of} files in {elapsed:.0f} s{eta} (decoded once, then cached)",
              file=sys.stderr, flush=True)


def read_path(path: Path, found: Scan | None = None, **options: Any) -> Decoded:
    """Decode every split under a directory or inside a tar archive in one sequential pass; `found` is the
    path's Scan (read here when not given), options are DecodeOptions fields."""
    opts = DecodeOptions(**options)
    found = found or scan(path, opts.split_mode)
    collector = LAYOUTS.get(found.kind)(found, opts)
    progress = DecodeProgress(str(path), found.images)
    for relpath, read in iter_members(path):
        if collector.claims(relpath):
            collector.add(relpath, read())
            progress.step()
    splits = collector.result(str(path), opts.image_size)
    if not splits:
        raise DataError(f"no images or CIFAR batches in {path}; expected [top/]<split>/<class>/*.jpg|png, "
                        "[top/]<class>/*.jpg|png or an official CIFAR folder/archive")
    count = channels_of([ds.images for ds in splits.values()], opts.channels)
    for ds in splits.values():
        ds.images = with_channels(ds.images, count)
    layout = {"kind": found.kind, **(found.layout.to_json() if found.layout else {})}
    return Decoded(splits, dict(getattr(collector, "names", {})), list(getattr(collector, "bad", [])),
                   found.ignored, layout)
