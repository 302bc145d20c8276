"""Built-in sources needing no files: scikit-learn's 8×8 digits and seeded synthetic images."""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .dataset import Dataset
from .imagefile import resize_images

BUILTIN_SPLITS = ("train", "test")
DIGITS_TEST_FRACTION = 0.2


def _split_index(split: str, source: str) -> int:
    """Position of split in BUILTIN_SPLITS; DataError for any other split."""
    if split not in BUILTIN_SPLITS:
        raise DataError(f"source {source!r} has no split {split!r}; choose one of: {', '.join(BUILTIN_SPLITS)}")
    return BUILTIN_SPLITS.index(split)


def _positive(name: str, value: object, minimum: int = 1) -> int:
    """Validate an integer option >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def digits(split: str = "train", image_size: int = 16) -> Dataset:
    """sklearn's 1,797 8×8 digits as RGB uint8, bilinear-upscaled to image_size²; test = last 20% of each class."""
    from sklearn.datasets import load_digits

    want_test = _split_index(split, "digits") == 1
    image_size = _positive("image_size", image_size)
    bunch = load_digits()
    grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    keep = np.zeros(len(labels), bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = int(round(len(members) * DIGITS_TEST_FRACTION))
        keep[members[len(members) - n_test:] if want_test else members[: len(members) - n_test]] = True
    rgb = np.repeat(grey[keep][..., None], 3, axis=3)
    return Dataset(resize_images(rgb, image_size), labels[keep], [str(d) for d in range(10)], f"digits:{split}")


def synthetic(
    split: str = "train", num_classes: int = 10, image_size: int = 16, n: int | None = None, seed: int = 0
) -> Dataset:
    """Seeded learnable images: per-class colour and oriented grating plus per-sample noise; n defaults to 2048/512."""
    index = _split_index(split, "synthetic")
    num_classes = _positive("num_classes", num_classes, 2)
    image_size = _positive("image_size", image_size, 4)
    n = _positive("n", (2048, 512)[index] if n is None else n)
    seed = _positive("seed", seed, 0)
    protos = _class_prototypes(num_classes, image_size, seed)
    rng = np.random.default_rng([seed, 1 + index])
    labels = rng.permutation(np.arange(n) % num_classes)  # balanced to within one
    brightness = rng.uniform(-0.1, 0.1, (n, 1, 1, 1))
    noise = rng.normal(0.0, 0.15, (n, image_size, image_size, 3))
    images = np.clip(protos[labels] + brightness + noise, 0.0, 1.0)
    classes = [f"class{k}" for k in range(num_classes)]
    return Dataset(np.rint(images * 255).astype(np.uint8), labels.astype(np.int64), classes, f"synthetic:{split}")


def _class_prototypes(num_classes: int, image_size: int, seed: int) -> np.ndarray:
    """num_classes × S × S × 3 float prototypes in [0, 1]: a colour plus a class-oriented grating."""
    rng = np.random.default_rng([seed, 0])
    colours = rng.uniform(0.25, 0.75, (num_classes, 1, 1, 3))
    angles = np.pi * (np.arange(num_classes) + rng.uniform(0, 0.5, num_classes)) / num_classes
    freqs = rng.uniform(1.0, 3.0, num_classes) * 2 * np.pi / image_size
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    phase = (np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy) * freqs[:, None, None]
    return colours + 0.2 * np.sin(phase)[..., None]
