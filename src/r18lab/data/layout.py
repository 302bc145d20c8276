"""What a dataset path holds, read from its file names alone (no image decoded, nothing cached), so that a
wrong split or class name is reported in seconds, before any decode.

Image-folder layouts accepted:

    [top/]<split>/<class>/<image>   a split level: train/ and test/, or domains (art_painting/, sketch/, ...)
    [top/]<class>/<image>           no split level: `data.split=auto` makes a stratified, seeded train/test split

A level is read as splits when it holds two or more folders, or one folder named like a split (train, test,
val, ...); a single other folder (caltech101/<class>/<image>) is a top folder. `data.split=folders` or `auto`
forces the reading. Files without an image extension are listed (`ignored`), never decoded."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError, DataError
from .cifar import cifar_role
from .imagefile import is_image_name
from .members import iter_members

#: folder names read as a split level even when alone (e.g. a folder holding only train/)
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "eval", "dev"})
#: the splits data.split=auto makes; `ALL` is the one array an un-split folder is decoded into
AUTO_SPLITS = ("train", "test")
ALL = "all"


class SelectionError(DataError, ConfigError):
    """A data choice that does not fit the dataset (a split or class that is not there): one line, exit 2."""


@dataclass(frozen=True)
class FolderLayout:
    """Where split and class sit in an image's path: `prefix` folders, then <split>/ if `split_level`, <class>/."""

    prefix: tuple[str, ...] = ()
    split_level: bool = True

    def place(self, relpath: str) -> tuple[str, str, str] | None:
        """(split, class, file name) of an image path (split ALL without a split level); None if it does not fit."""
        parts = relpath.split("/")
        depth = len(self.prefix) + (3 if self.split_level else 2)
        if len(parts) != depth or tuple(parts[: len(self.prefix)]) != self.prefix:
            return None
        return (parts[-3] if self.split_level else ALL), parts[-2], parts[-1]

    def to_json(self) -> dict:
        return {"prefix": "/".join(self.prefix), "split_level": self.split_level}

    @classmethod
    def from_json(cls, d: dict) -> "FolderLayout":
        return cls(tuple(p for p in d["prefix"].split("/") if p), bool(d["split_level"]))


@dataclass
class Scan:
    """A path's layout from its member names: `kind` imagefolder or cifar, the folder layout, the splits on
    disk with the classes each holds (CIFAR: classes unknown before decode), and the files no layout claims."""

    kind: str
    layout: FolderLayout | None = None
    splits: dict[str, set[str]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    images: int = 0

    @property
    def offer(self) -> "Offer":
        classes = sorted(set().union(*self.splits.values())) if self.kind == "imagefolder" else None
        return Offer(sorted(self.splits), classes, self.layout is not None and not self.layout.split_level)


@dataclass(frozen=True)
class Offer:
    """What a source offers to choose from: split names on disk (ALL when un-split), class names (None: not known
    before decode), and whether the train/test split is made by data.split=auto."""

    splits: list[str]
    classes: list[str] | None
    auto: bool

    @property
    def choices(self) -> list[str]:
        return list(AUTO_SPLITS) if self.auto else sorted(self.splits)


def scan(path: Path, split_mode: str | None = None) -> Scan:
    """Read the layout of a folder or .tar(.gz) from its member names only (no file is opened for reading)."""
    images, cifar, ignored = [], [], []
    for relpath, _ in iter_members(path):
        if is_image_name(relpath):
            images.append(relpath)
        elif cifar_role(relpath) is not None:
            cifar.append(relpath)
        else:
            ignored.append(relpath)
    if images and cifar:
        raise DataError(f"{path} holds several dataset layouts (cifar, imagefolder); point at one of them")
    if cifar:
        roles = {cifar_role(r)[1] for r in cifar}  # type: ignore[index]
        return Scan("cifar", None, {s: set() for s in AUTO_SPLITS if s in roles}, ignored, 0)
    if not images:
        raise DataError(f"no images or CIFAR batches in {path}; expected [top/]<split>/<class>/*.jpg|png, "
                        "[top/]<class>/*.jpg|png or an official CIFAR folder/archive")
    layout = folder_layout(images, split_mode)
    splits: dict[str, set[str]] = {}
    for relpath in images:
        split, cls, _ = layout.place(relpath)  # type: ignore[misc]
        splits.setdefault(split, set()).add(cls)
    return Scan("imagefolder", layout, splits, sorted(ignored), len(images))


def folder_layout(images: list[str], split_mode: str | None = None) -> FolderLayout:
    """The layout every image path fits (see the module docstring); DataError naming two paths that disagree."""
    parts = [p.split("/") for p in images]
    if split_mode is None:
        depths = {len(p) for p in parts}
        if len(depths) > 1:
            a = min(parts, key=len)
            b = max(parts, key=len)
            raise DataError(f"images at different depths ({'/'.join(a)} and {'/'.join(b)}); arrange all as "
                            "[top/]<split>/<class>/<image> or all as [top/]<class>/<image>")
        depth = depths.pop()
        if depth < 2:
            raise DataError(f"image {images[0]} is not inside a class folder; arrange images as <class>/<image> "
                            "or <split>/<class>/<image>")
        names = {p[-3] for p in parts} if depth >= 3 else set()
        split_mode = "folders" if len(names) > 1 or names & SPLIT_NAMES else "auto"
    levels = 3 if split_mode == "folders" else 2
    short = [p for p in parts if len(p) < levels]
    if short:
        raise DataError(f"image {'/'.join(short[0])} is not inside <split>/<class>/; arrange images as "
                        "[top/]<split>/<class>/<image>, or set data.split=auto for [top/]<class>/<image>")
    prefix = tuple(parts[0][:-levels])
    for p in parts:
        if tuple(p[:-levels]) != prefix:
            where = "<split>/<class>/<image>" if levels == 3 else "<class>/<image>"
            raise DataError(f"images at different depths ({images[0]} and {'/'.join(p)}); with "
                            f"data.split={split_mode} arrange all as [top/]{where}")
    return FolderLayout(prefix, levels == 3)


def check_choices(offer: Offer, wanted: Iterable[str], exclude: Iterable[str], source: object) -> None:
    """SelectionError (one line, exit 2) for a wanted split or an excluded class the source does not have."""
    choices = offer.choices
    for name in wanted:
        if name not in choices:
            how = " (data.split=auto makes them from <class>/<image>)" if offer.auto else ""
            raise SelectionError(f"{source} has no split {name!r}; available: {', '.join(choices)}{how}; set "
                                 "data.train_split / data.test_split to these (a list concatenates several)")
    if offer.classes is not None:
        check_classes(offer.classes, exclude, source)


def check_classes(classes: list[str], exclude: Iterable[str], source: object) -> None:
    """SelectionError for a class to exclude that the source does not have, listing its classes."""
    missing = [c for c in exclude if c not in classes]
    if missing:
        raise SelectionError(f"data.exclude_classes: {missing[0]!r} is not a class of {source}; its classes: "
                             f"{', '.join(classes)}")
    if classes and set(classes) <= set(exclude):
        raise SelectionError(f"data.exclude_classes leaves no class of {source}; exclude fewer classes")
