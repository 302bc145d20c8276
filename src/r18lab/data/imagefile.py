"""Decode image files to RGB uint8 arrays and stack them into one N×H×W×3 array."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def is_image_name(name: str) -> bool:
    """True for a file name with a supported image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: bytes, where: str, image_size: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an H×W×3 uint8 array, bilinear-resized to image_size² if given."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")  # forces a full decode; grey, palette and RGBA become RGB
            if image_size is not None and rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {where} ({exc}); the file is corrupt or truncated: replace or remove it") from None


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear-resize every image of an N×H×W×3 uint8 array to image_size×image_size."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((len(images), image_size, image_size, images.shape[3]), np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.Resampling.BILINEAR))
    return out


def stack_images(arrays: list[np.ndarray], names: list[str], where: str) -> np.ndarray:
    """Stack same-sized H×W×3 arrays; DataError naming two differing files when sizes differ."""
    if not arrays:
        return np.zeros((0, 1, 1, 3), np.uint8)
    first = arrays[0].shape
    for arr, name in zip(arrays, names):
        if arr.shape != first:
            raise DataError(
                f"images in {where} have different sizes ({first[1]}×{first[0]} in {names[0]}, "
                f"{arr.shape[1]}×{arr.shape[0]} in {name}); pass image_size=N to resize all to N×N"
            )
    return np.stack(arrays)


def check_image_size(image_size: int | None) -> int | None:
    """Validate the image_size option: None or a positive int."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    return image_size
