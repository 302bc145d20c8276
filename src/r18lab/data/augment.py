"""Batched augmentation of uint8 N×C×H×W tensors on their own device, seeded by an explicit Generator.

Pipeline (each step optional): pad once -> per-sample random crop and horizontal flip as one indexed
gather from an unfold view (no Python loop over samples) -> float32 normalise -> cutout
(a size×size square centred uniformly in the image, clipped at the border, set to 0 = the mean
after normalising, as in DeVries & Taylor 2017). Random draws are made on the generator's device
and moved to the images' device, so a CPU generator gives the same augmentation on CPU and CUDA.

Optional float steps (torchvision semantics, see `random_resized_crop` and `color`): a random resized crop
replaces pad-and-crop, and colour jitter and random greyscale act on [0, 1] images before normalising:
(resized crop | pad + crop) -> flip -> colour jitter -> greyscale -> normalise -> cutout. With none of them
set the pipeline is the uint8 one above, bit for bit.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .color import check_jitter, color_jitter, random_grayscale
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
    mean_t, std_t = _stats(images, mean, std)
    return images.float().mul_(1.0 / (255.0 * std_t)).add_(-mean_t / std_t)


def normalize_float(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float N×C×H×W in [0, 1] -> (x - mean)/std per channel, in place."""
    mean_t, std_t = _stats(x, mean, std)
    return x.mul_(1.0 / std_t).add_(-mean_t / std_t)


def _stats(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as 1×C×1×1 float32 tensors on the images' device; DataError unless one value per channel."""
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise DataError(f"mean/std have {len(mean)}/{len(std)} values but images have {images.shape[1]} channels")
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return mean_t, std_t


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


RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
"""torchvision RandomResizedCrop's defaults: area fraction and aspect ratio (w/h) ranges."""


def check_resized_crop(scale: Sequence[float], ratio: Sequence[float]) -> tuple[tuple[float, float], ...]:
    """((scale lo, hi), (ratio lo, hi)) as floats; DataError unless 0 < scale lo <= hi <= 1 and 0 < ratio lo <= hi."""
    s, r = tuple(float(v) for v in scale), tuple(float(v) for v in ratio)
    if len(s) != 2 or len(r) != 2 or not (0 < s[0] <= s[1] <= 1) or not (0 < r[0] <= r[1] < math.inf):
        raise DataError(f"random_resized_crop needs scale [lo, hi] with 0 < lo <= hi <= 1 and ratio [lo, hi] with "
                        f"0 < lo <= hi; got scale {list(scale)}, ratio {list(ratio)}")
    return s, r


def resized_crop_boxes(
    n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float], generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """n boxes (top, left, h, w), int64 on the generator's device, as torchvision RandomResizedCrop.get_params.

    Per image, `attempts` (area fraction ~ U[scale], log aspect ~ U[log ratio]) pairs are drawn at once; the box
    sides are round(sqrt(area·aspect)) × round(sqrt(area/aspect)) (round half to even, as Python's round); the
    first pair whose box fits is kept, with a uniform position; an image without one takes torchvision's
    fallback, the centred crop of the whole image clipped to the ratio range.
    """
    (s0, s1), (r0, r1) = check_resized_crop(scale, ratio)
    dev, f64 = generator.device, torch.float64
    area = height * width * (s0 + (s1 - s0) * torch.rand(n, attempts, generator=generator, device=dev, dtype=f64))
    log_r0, log_r1 = math.log(r0), math.log(r1)
    aspect = torch.exp(log_r0 + (log_r1 - log_r0) * torch.rand(n, attempts, generator=generator, device=dev, dtype=f64))
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first fitting attempt (or 0 when none fits)
    found = fits.any(1)
    in_ratio = width / height
    if in_ratio < r0:
        fh, fw = int(round(width / r0)), width
    elif in_ratio > r1:
        fh, fw = height, int(round(height * r1))
    else:
        fh, fw = height, width
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fh))
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fw))
    u = torch.rand(n, 2, generator=generator, device=dev, dtype=f64)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), float((height - fh) // 2))
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), float((width - fw) // 2))
    return torch.stack([top, left, h, w], 1).long()


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box (top, left, h, w) resized to size with bilinear interpolation, float in and out.

    One affine_grid + grid_sample (align_corners=False) for the batch; the sampling points are clamped to the
    box's outermost pixel centres, so the result equals F.interpolate(crop, size, mode="bilinear",
    align_corners=False, antialias=False) of each cropped image (no pixel outside the box leaks in).
    """
    n, c, height, width = x.shape
    top, left, h, w = boxes.to(device=x.device, dtype=torch.float64).unbind(1)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = w / width, (2 * left + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * top + h) / height - 1
    grid = F.affine_grid(theta.to(x.dtype), [n, c, *size], align_corners=False)
    lo = torch.stack([(2 * left + 1) / width - 1, (2 * top + 1) / height - 1], 1).to(x.dtype).view(n, 1, 1, 2)
    hi = torch.stack([(2 * (left + w) - 1) / width - 1, (2 * (top + h) - 1) / height - 1], 1)
    grid = torch.minimum(torch.maximum(grid, lo), hi.to(x.dtype).view(n, 1, 1, 2))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class Augment:
    """uint8 NCHW -> float32 NCHW: random crop (zero/reflect padding) or random resized crop, horizontal flip,
    colour jitter, random greyscale, normalise, cutout.

    color_jitter = (brightness, contrast, saturation, hue) as torchvision's ColorJitter, applied to each image
    with probability color_jitter_p; random_resized_crop = ((scale lo, hi), (ratio lo, hi)) replaces
    pad-and-crop (padding must be 0) and resizes to crop × crop (crop None: the input size).
    """

    crop: int | None = None
    padding: int = 4
    pad_mode: str = "zero"
    flip: bool = True
    cutout: int = 0
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    color_jitter: tuple[float, float, float, float] | None = None
    color_jitter_p: float = 1.0
    grayscale_p: float = 0.0
    random_resized_crop: tuple[tuple[float, float], tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise DataError(f"pad_mode {self.pad_mode!r} is unknown; choose one of: {', '.join(PAD_MODES)}")
        if (self.crop is not None and self.crop < 1) or self.padding < 0 or self.cutout < 0:
            raise DataError(f"crop must be >= 1 and padding, cutout >= 0; got {self.crop}, {self.padding}, {self.cutout}")
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise DataError(f"mean and std need one value per channel and std > 0; got {self.mean}, {self.std}")
        if not (0 <= self.color_jitter_p <= 1 and 0 <= self.grayscale_p <= 1):
            raise DataError(f"color_jitter_p and grayscale_p are probabilities in [0, 1]; got "
                            f"{self.color_jitter_p}, {self.grayscale_p}")
        if self.color_jitter is not None:
            object.__setattr__(self, "color_jitter", check_jitter(self.color_jitter))
        if self.random_resized_crop is not None:
            object.__setattr__(self, "random_resized_crop", check_resized_crop(*self.random_resized_crop))
            if self.padding:
                raise DataError(f"random_resized_crop replaces pad-and-crop, so padding must be 0 (got "
                                f"{self.padding}); set padding=0")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def float_steps(self) -> bool:
        """Whether a step on [0, 1] floats (resized crop, colour jitter, greyscale) is on."""
        return self.random_resized_crop is not None or self.color_jitter is not None or self.grayscale_p > 0

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, views: int = 1
    ) -> torch.Tensor | list[torch.Tensor]:
        """Augmented float32 batch; with views=n > 1, a list of n independently augmented batches."""
        _check_images(images)
        if views < 1:
            raise DataError(f"views must be >= 1, got {views}")
        batch = images.repeat(views, 1, 1, 1) if views > 1 else images
        if self.random_resized_crop is not None:
            x = self._resized_crop_flip(batch, generator)
        else:
            batch = crop_flip(batch, self.crop, self.padding, self.pad_mode, self.flip, generator)
            if not self.float_steps:  # the all-uint8 path, unchanged
                x = normalize_only(batch, self.mean, self.std)
            else:
                x = batch.float().div_(255.0)
        if self.float_steps:
            if self.color_jitter is not None:
                x = color_jitter(x, self.color_jitter, generator, self.color_jitter_p)
            if self.grayscale_p > 0:
                x = random_grayscale(x, self.grayscale_p, generator)
            x = normalize_float(x, self.mean, self.std)
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        return list(x.chunk(views)) if views > 1 else x

    def _resized_crop_flip(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random resized crop to crop × crop (or the input size), then the horizontal flip; float in [0, 1]."""
        n, _, h, w = batch.shape
        scale, ratio = self.random_resized_crop
        boxes = resized_crop_boxes(n, h, w, scale, ratio, generator)
        x = resized_crop(batch.float().div_(255.0), boxes, (h, w) if self.crop is None else (self.crop, self.crop))
        if self.flip:
            mirrored = _draw_int(2, n, generator, x.device).bool().view(-1, 1, 1, 1)
            x = torch.where(mirrored, x.flip(3), x)
        return x

    def for_eval(self) -> Augment:
        """The same normalisation with every random step switched off."""
        return replace(self, crop=None, flip=False, cutout=0, color_jitter=None, grayscale_p=0.0,
                       random_resized_crop=None)


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
