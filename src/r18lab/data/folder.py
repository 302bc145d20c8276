"""The image-folder layout: [top/]<split>/<class>/<image>.{jpg,jpeg,png}."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from .dataset import Dataset
from .imagefile import decode_image, is_image_name, stack_images


@dataclass
class ImageFolderCollector:
    """Decodes images as they stream past and assembles them into per-split Datasets."""

    image_size: int | None = None
    prefix: tuple[str, str] | None = None  # (top-level folder, the first file that set it)
    items: dict[str, list[tuple[str, str, np.ndarray]]] = field(default_factory=dict)  # split -> (class, name, img)

    def claims(self, relpath: str) -> bool:
        """True for an image file."""
        return is_image_name(relpath)

    def add(self, relpath: str, data: bytes) -> None:
        """Decode one image and file it under its split and class."""
        parts = relpath.split("/")
        if len(parts) < 3:
            raise DataError(f"image {relpath} is not inside <split>/<class>/; arrange images as root/<split>/<class>/<file>")
        prefix = "/".join(parts[:-3])
        if self.prefix is None:
            self.prefix = (prefix, relpath)
        elif self.prefix[0] != prefix:
            raise DataError(
                f"images at different depths ({self.prefix[1]} and {relpath}); arrange all as [top/]<split>/<class>/<file>"
            )
        split, cls, name = parts[-3:]
        self.items.setdefault(split, []).append((cls, name, decode_image(data, relpath, self.image_size)))

    def result(self, where: str, image_size: int | None) -> dict[str, Dataset] | None:
        """The per-split Datasets with labels indexing the sorted union of class names, or None if empty."""
        if not self.items:
            return None
        classes = sorted({cls for items in self.items.values() for cls, _, _ in items})
        index = {cls: i for i, cls in enumerate(classes)}
        splits: dict[str, Dataset] = {}
        for split in sorted(self.items):
            items = sorted(self.items[split], key=lambda item: (index[item[0]], item[1]))
            names = [f"{split}/{cls}/{name}" for cls, name, _ in items]
            images = stack_images([img for _, _, img in items], names, where)
            labels = np.array([index[cls] for cls, _, _ in items], dtype=np.int64)
            splits[split] = Dataset(images, labels, list(classes), f"imagefolder:{split}")
        return splits
