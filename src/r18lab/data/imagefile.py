"""Decode image files to RGB uint8 arrays (resized by a declared policy), stack them into one N×H×W×3 array,
and reduce the channels (greyscale) when asked."""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError

#: file name endings read as images (torchvision ImageFolder's list); other files are reported, never decoded
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: how an image reaches image_size²: squash = bilinear to the square (aspect ratio not kept); shorter_side =
#: shorter side to image_size (bilinear), then the centre square (torchvision Resize(S) + CenterCrop(S))
RESIZE_POLICIES = ("squash", "shorter_side")
DEFAULT_RESIZE = "squash"
CHANNELS = (1, 3, "auto")


class BadImageError(DataError, ConfigError):
    """An image file that does not decode (with data.on_bad_image=error): one line naming it, exit 2."""


def is_image_name(name: str) -> bool:
    """True for a file name with a supported image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: bytes, where: str, image_size: int | None = None, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Decode encoded image bytes to an H×W×3 uint8 array, brought to image_size² by the resize policy if given."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")  # forces a full decode; grey, palette and RGBA become RGB
            if image_size is not None and rgb.size != (image_size, image_size):
                rgb = resize_image(rgb, image_size, resize)
            return np.asarray(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        why = re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        raise BadImageError(f"cannot decode image {where} ({why}); the file is corrupt or truncated: replace or remove "
                            "it, or set data.on_bad_image=skip to leave out (and list) such files") from None


def resize_image(img: Image.Image, size: int, policy: str = DEFAULT_RESIZE) -> Image.Image:
    """img brought to size×size: squashed, or shorter side to size then the centre square."""
    if policy == "squash":
        return img.resize((size, size), Image.Resampling.BILINEAR)
    w, h = img.size
    if min(w, h) != size:
        if w <= h:
            w, h = size, max(size, int(size * h / w))
        else:
            w, h = max(size, int(size * w / h)), size
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


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
                f"{arr.shape[1]}×{arr.shape[0]} in {name}); pass image_size=N (data.image_size=N) to resize all to N×N "
                "(data.resize: squash or shorter_side)"
            )
    return np.stack(arrays)


def check_image_size(image_size: int | None) -> int | None:
    """Validate the image_size option: None or a positive int."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    return image_size


def is_grey(images: np.ndarray, chunk: int = 1024) -> bool:
    """True if every pixel of N×H×W×C uint8 images has equal channels (one channel: always)."""
    if images.shape[-1] == 1:
        return True
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk])
        if not (np.array_equal(block[..., 0], block[..., 1]) and np.array_equal(block[..., 0], block[..., 2])):
            return False
    return True


def to_grey(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """N×H×W×3 RGB → N×H×W×1 luma, exactly as PIL's convert("L") (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B)."""
    if images.shape[-1] == 1:
        return images
    out = np.empty((*images.shape[:3], 1), np.uint8)
    weights = np.array([19595, 38470, 7471], np.uint32)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk]).astype(np.uint32)
        out[start : start + chunk, ..., 0] = ((block @ weights + 0x8000) >> 16).astype(np.uint8)
    return out


def channels_of(all_images: list[np.ndarray], channels: int | str) -> int:
    """The channel count images should have: `channels` itself, or for auto 1 if every array is grey, else 3."""
    if channels == "auto":
        return 1 if all(is_grey(images) for images in all_images) else 3
    return int(channels)


def with_channels(images: np.ndarray, count: int) -> np.ndarray:
    """RGB (or grey) N×H×W×C images with `count` channels: 1 = luma, 3 = RGB (grey replicated)."""
    if images.shape[-1] == count:
        return images
    if count == 1:
        return to_grey(images)
    return np.repeat(np.asarray(images), 3, axis=3)


def check_channels(channels: object) -> int | str:
    """Validate the channels option: 1, 3 or auto."""
    if isinstance(channels, bool) or channels not in CHANNELS:
        raise ConfigError(f"data.channels must be 1, 3 or auto, got {channels!r}")
    return channels  # type: ignore[return-value]
