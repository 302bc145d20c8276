"""Batched augmentation of uint8 N×C×H×W tensors on their own device, seeded by an explicit Generator.

Pipeline (each step optional): pad once -> per-sample random crop and horizontal flip as one indexed
gather from an unfold view (no Python loop over samples) -> float32 normalise -> cutout
(a size×size square centred uniformly in the image, clipped at the border, set to 0 = the mean
after normalising, as in DeVries & Taylor 2017). Random draws are made on the generator's device
and moved to the images' device, so a CPU generator gives the same augmentation on CPU and CUDA.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .dataset import Dataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
PAD_MODES = {"zero": "constant", "reflect": "reflect"}
"""pad_mode option -> torch.nn.functional.pad mode."""


def _check_images(images: torch.Tensor) -> None:
    """DataError unless images is a uint8 N×C×H×W tensor."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"augmentation expects a uint8 N×C×H×W tensor, got {got}; convert with to_device_tensors")


def normalize_only(
    images: torch.Tensor, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> torch.Tensor:
    """uint8 N×C×H×W -> float32 (x/255 - mean)/std per channel, on the images' device."""
    _check_images(images)
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise DataError(f"mean/std have {len(mean)}/{len(std)} values but images have {images.shape[1]} channels")
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float().mul_(1.0 / (255.0 * std_t)).add_(-mean_t / std_t)


def _draw_int(high: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n integers uniform in [0, high) drawn from generator, moved to device."""
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device)


def crop_flip(
    images: torch.Tensor, crop: int | None, padding: int, pad_mode: str, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample random crop (after padding once) and horizontal flip as one indexed gather; uint8 in and out.

    The padded batch (and, with flip, its mirror image stacked beside it) is viewed as all crop windows
    with unfold; indexing that view by (sample, mirrored?, dy, dx) copies each sample's window.
    """
    n, _, h, w = images.shape
    ch, cw = (h, w) if crop is None else (crop, crop)
    padding = 0 if crop is None else padding
    if pad_mode == "reflect" and padding >= min(h, w):
        raise DataError(f"reflect padding {padding} needs images larger than it, got {h}×{w}; lower padding or use zero")
    if padding:
        images = F.pad(images, (padding,) * 4, mode=PAD_MODES[pad_mode])
    hp, wp = images.shape[2:]
    if ch > hp or cw > wp:
        raise DataError(f"crop {crop} is larger than the padded {hp}×{wp} images; lower crop or raise padding")
    device = images.device
    dy = _draw_int(hp - ch + 1, n, generator, device)
    dx = _draw_int(wp - cw + 1, n, generator, device)
    sample = torch.arange(n, device=device)
    if flip:
        mirrored = _draw_int(2, n, generator, device)
        both = torch.stack([images, images.flip(3)], 1)  # N×2×C×Hp×Wp
        return both.unfold(3, ch, 1).unfold(4, cw, 1)[sample, mirrored, :, dy, dx]
    if (ch, cw) == (hp, wp):
        return images
    return images.unfold(2, ch, 1).unfold(3, cw, 1)[sample, :, dy, dx]


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size×size square per sample, centred uniformly in the image and clipped at its border."""
    n, _, h, w = x.shape
    cy = _draw_int(h, n, generator, x.device) - size // 2
    cx = _draw_int(w, n, generator, x.device) - size // 2
    ry = torch.arange(h, device=x.device)[None, :] - cy[:, None]
    rx = torch.arange(w, device=x.device)[None, :] - cx[:, None]
    inside = ((ry >= 0) & (ry < size))[:, None, :, None] & ((rx >= 0) & (rx < size))[:, None, None, :]
    return x.masked_fill_(inside, 0.0)


@dataclass(frozen=True)
class Augment:
    """Random crop (with zero/reflect padding), horizontal flip, cutout and normalise: uint8 NCHW -> float32 NCHW."""

    crop: int | None = None
    padding: int = 4
    pad_mode: str = "zero"
    flip: bool = True
    cutout: int = 0
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise DataError(f"pad_mode {self.pad_mode!r} is unknown; choose one of: {', '.join(PAD_MODES)}")
        if (self.crop is not None and self.crop < 1) or self.padding < 0 or self.cutout < 0:
            raise DataError(f"crop must be >= 1 and padding, cutout >= 0; got {self.crop}, {self.padding}, {self.cutout}")
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise DataError(f"mean and std need one value per channel and std > 0; got {self.mean}, {self.std}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, views: int = 1
    ) -> torch.Tensor | list[torch.Tensor]:
        """Augmented float32 batch; with views=n > 1, a list of n independently augmented batches."""
        _check_images(images)
        if views < 1:
            raise DataError(f"views must be >= 1, got {views}")
        batch = images.repeat(views, 1, 1, 1) if views > 1 else images
        batch = crop_flip(batch, self.crop, self.padding, self.pad_mode, self.flip, generator)
        x = normalize_only(batch, self.mean, self.std)
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        return list(x.chunk(views)) if views > 1 else x

    def for_eval(self) -> Augment:
        """The same normalisation with every random step switched off."""
        return replace(self, crop=None, flip=False, cutout=0)


def channel_stats(dataset: Dataset | np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of N×H×W×C uint8 images, in [0, 1] units (exact, from per-channel histograms)."""
    images = dataset.images if isinstance(dataset, Dataset) else np.asarray(dataset)
    if images.ndim != 4 or len(images) == 0 or images.dtype != np.uint8:
        raise DataError(f"channel_stats needs a non-empty uint8 N×H×W×C array, got {images.dtype} {images.shape}")
    channels = images.shape[3]
    offsets = np.arange(channels, dtype=np.int64) * 256  # channel c's values count in bins 256c..256c+255
    counts = np.zeros(256 * channels, np.int64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, channels)
        counts += np.bincount((block + offsets).ravel(), minlength=256 * channels)
    counts = counts.reshape(channels, 256)
    values = np.arange(256, dtype=np.float64) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    std = np.sqrt(np.maximum((counts * values**2).sum(1) / n - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(v) for v in std)
