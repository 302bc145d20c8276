"""The image-folder layouts ([top/]<split>/<class>/<image> or [top/]<class>/<image>, see layout.py): images
decoded as they stream past, filed by split and class, assembled into per-split Datasets."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from .dataset import Dataset
from .imagefile import DEFAULT_RESIZE, BadImageError, decode_image, is_image_name, stack_images
from .layout import FolderLayout


@dataclass
class ImageFolderCollector:
    """Decodes images as they stream past and assembles them into per-split Datasets (split ALL when un-split).

    With on_bad_image="skip" an image that does not decode is left out and listed in `bad`; else it stops the
    decode with one line naming it."""

    layout: FolderLayout = field(default_factory=FolderLayout)
    image_size: int | None = None
    resize: str = DEFAULT_RESIZE
    on_bad_image: str = "error"
    items: dict[str, list[tuple[str, str, np.ndarray]]] = field(default_factory=dict)  # split -> (class, name, img)
    bad: list[str] = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)  # split -> relpaths, in the order of its Dataset

    def claims(self, relpath: str) -> bool:
        """True for an image file."""
        return is_image_name(relpath)

    def add(self, relpath: str, data: bytes) -> None:
        """Decode one image and file it under its split and class."""
        place = self.layout.place(relpath)
        if place is None:
            raise DataError(f"image {relpath} does not fit the layout read a moment ago; the dataset changed while "
                            "loading: load it again once it is complete")
        split, cls, name = place
        try:
            img = decode_image(data, relpath, self.image_size, self.resize)
        except BadImageError:
            if self.on_bad_image != "skip":
                raise
            self.bad.append(relpath)
            return
        self.items.setdefault(split, []).append((cls, name, img))

    def result(self, where: str, image_size: int | None) -> dict[str, Dataset] | None:
        """The per-split Datasets with labels indexing the sorted union of class names, or None if empty."""
        if not self.items:
            if self.bad:
                raise DataError(f"none of the images in {where} decodes ({len(self.bad)} skipped, e.g. {self.bad[0]}); "
                                "check the files")
            return None
        classes = sorted({cls for items in self.items.values() for cls, _, _ in items})
        index = {cls: i for i, cls in enumerate(classes)}
        top = "/".join(self.layout.prefix)
        splits: dict[str, Dataset] = {}
        for split in sorted(self.items):
            items = sorted(self.items[split], key=lambda item: (index[item[0]], item[1]))
            names = [f"{split}/{cls}/{name}" if self.layout.split_level else f"{cls}/{name}" for cls, name, _ in items]
            images = stack_images([img for _, _, img in items], names, where)
            labels = np.array([index[cls] for cls, _, _ in items], dtype=np.int64)
            splits[split] = Dataset(images, labels, list(classes), f"imagefolder:{split}")
            self.names[split] = [f"{top}/{n}" if top else n for n in names]
        return splits
