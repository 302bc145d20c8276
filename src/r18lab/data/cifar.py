"""The official CIFAR-10/100 layouts: python pickles (cifar-*-python) and binary records (cifar-*-bin)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from .dataset import Dataset
from .imagefile import resize_images
from .safe_pickle import load_cifar_pickle

CIFAR_SIDE = 32
CIFAR_PIXELS = 3 * CIFAR_SIDE * CIFAR_SIDE

# basename pattern -> (layout, role); role is "meta", "train" or "test"
_FILE_ROLES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"data_batch_(\d+)"), "cifar10-python", "train"),
    (re.compile(r"test_batch"), "cifar10-python", "test"),
    (re.compile(r"batches\.meta"), "cifar10-python", "meta"),
    (re.compile(r"train"), "cifar100-python", "train"),
    (re.compile(r"test"), "cifar100-python", "test"),
    (re.compile(r"meta"), "cifar100-python", "meta"),
    (re.compile(r"data_batch_(\d+)\.bin"), "cifar10-binary", "train"),
    (re.compile(r"test_batch\.bin"), "cifar10-binary", "test"),
    (re.compile(r"batches\.meta\.txt"), "cifar10-binary", "meta"),
    (re.compile(r"train\.bin"), "cifar100-binary", "train"),
    (re.compile(r"test\.bin"), "cifar100-binary", "test"),
    (re.compile(r"fine_label_names\.txt"), "cifar100-binary", "meta"),
]

# layout -> (label bytes before each binary record, index of the label byte used)
_BINARY_LABEL_BYTES = {"cifar10-binary": (1, 0), "cifar100-binary": (2, 1)}  # cifar-100: coarse, fine


def cifar_role(relpath: str) -> tuple[str, str, int] | None:
    """(layout, role, batch order) of a CIFAR file by its base name, or None if it is not one."""
    base = relpath.rsplit("/", 1)[-1]
    for pattern, layout, role in _FILE_ROLES:
        match = pattern.fullmatch(base)
        if match:
            return layout, role, int(match.group(1)) if match.groups() else 0
    return None


@dataclass
class CifarCollector:
    """Gathers the CIFAR files met during one pass and assembles them into per-split Datasets."""

    files: dict[tuple[str, str, int], tuple[str, bytes]] = field(default_factory=dict)

    def claims(self, relpath: str) -> bool:
        """True if relpath is a CIFAR batch or meta file."""
        return cifar_role(relpath) is not None

    def add(self, relpath: str, data: bytes) -> None:
        """Keep one CIFAR file's bytes."""
        key = cifar_role(relpath)
        assert key is not None
        if key in self.files:
            raise DataError(f"two copies of a CIFAR file: {self.files[key][0]} and {relpath}; point at one CIFAR folder")
        self.files[key] = (relpath, data)

    def result(self, where: str, image_size: int | None) -> dict[str, Dataset] | None:
        """The per-split Datasets, or None if no CIFAR file was seen."""
        layouts = sorted({layout for layout, _, _ in self.files})
        if not layouts:
            return None
        if len(layouts) > 1:
            raise DataError(f"{where} mixes CIFAR layouts ({', '.join(layouts)}); point at one of them")
        layout = layouts[0]
        classes = self._classes(layout, where)
        splits: dict[str, Dataset] = {}
        for split in ("train", "test"):
            parts = [self.files[k] for k in sorted(self.files) if k[1] == split]
            if parts:
                images, labels = _concat([_parse_batch(layout, name, data, len(classes)) for name, data in parts])
                if image_size is not None:
                    images = resize_images(images, image_size)
                splits[split] = Dataset(images, labels, classes, f"{layout}:{split}")
        if not splits:
            raise DataError(f"{where} has CIFAR metadata but no train or test batches; the archive is incomplete")
        return splits

    def _classes(self, layout: str, where: str) -> list[str]:
        """Class names from the layout's meta file."""
        meta = [v for (lay, role, _), v in self.files.items() if role == "meta"]
        if not meta:
            raise DataError(f"{where} has CIFAR batches but no class-name file ({layout}); the archive is incomplete")
        name, data = meta[0]
        if layout.endswith("binary"):
            return [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
        key = "label_names" if layout == "cifar10-python" else "fine_label_names"
        names = load_cifar_pickle(data, name).get(key)
        if not isinstance(names, list) or not names:
            raise DataError(f"{name} has no {key} list; the file is not an official CIFAR meta file")
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _parse_batch(layout: str, name: str, data: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images N×32×32×3 uint8, labels int64) of one CIFAR batch file."""
    if layout.endswith("binary"):
        pixels, labels = _parse_binary(layout, name, data)
    else:
        pixels, labels = _parse_pickle(layout, name, data)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name} has labels outside 0..{num_classes - 1}; the file is corrupt: re-download it")
    images = pixels.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _parse_pickle(layout: str, name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Pixels N×3072 and labels of a pickled batch."""
    batch: dict[str, Any] = load_cifar_pickle(data, name)
    pixels = batch.get("data")
    raw_labels = batch.get("labels" if layout == "cifar10-python" else "fine_labels")
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.shape[1] != CIFAR_PIXELS or raw_labels is None:
        raise DataError(f"{name} is not a CIFAR batch (needs 'data' N×{CIFAR_PIXELS} and labels); re-download it")
    labels = np.asarray(raw_labels, dtype=np.int64)
    if labels.shape != (len(pixels),):
        raise DataError(f"{name} has {len(pixels)} images but {labels.size} labels; the file is corrupt: re-download it")
    return pixels.astype(np.uint8, copy=False), labels


def _parse_binary(layout: str, name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Pixels N×3072 and labels of a binary batch (label bytes then 3072 pixel bytes per record)."""
    label_bytes, label_index = _BINARY_LABEL_BYTES[layout]
    record = label_bytes + CIFAR_PIXELS
    if len(data) % record:
        raise DataError(
            f"{name} is {len(data)} bytes, not a multiple of the {record}-byte record; it is truncated: re-download it"
        )
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    return rows[:, label_bytes:], rows[:, label_index].astype(np.int64)


def _concat(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (images, labels) batches in order."""
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
