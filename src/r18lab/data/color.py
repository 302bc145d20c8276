"""Colour operations on float N×C×H×W images in [0, 1] (C = 3 RGB, or 1 grey), one factor per image, batched.

Semantics are torchvision's functional ops on float tensors (ColorJitter, RandomGrayscale):
- brightness f: x·f, clamped to [0, 1];
- contrast f: f·x + (1 − f)·m, m = the image's mean grey level (one number per image), clamped;
- saturation f: f·x + (1 − f)·grey(x) per pixel, clamped;
- hue shift δ ∈ [−0.5, 0.5]: RGB → HSV, h ← (h + δ) mod 1, HSV → RGB;
- grey(x) = 0.299 R + 0.587 G + 0.114 B (ITU-R 601, PIL's weights; torchvision's tensor path uses 0.2989 for R,
  a difference below 1e-4 of the value, and with 0.299 the weights sum to 1 so grey and white pixels stay put).
One-channel images are already grey: saturation, hue and greyscale leave them unchanged, contrast blends with
their mean (as torchvision does).

`color_jitter` applies the four ops in a random order drawn per image, as torchvision's ColorJitter does per
call (one call per image in a per-sample pipeline); images are grouped by the op they take at each of the four
steps, so the work is four passes over the batch, not a loop over images.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DataError

GREY_WEIGHTS = (0.299, 0.587, 0.114)


def _channels(x: torch.Tensor) -> int:
    if x.ndim != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        raise DataError(f"colour ops need float N×C×H×W images with 1 or 3 channels, got {x.dtype} {tuple(x.shape)}")
    return x.shape[1]


def _per_image(factor: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A factor (number, or one per image) as an N×1×1×1 (or 1×1×1×1) tensor on x's device and dtype."""
    f = torch.as_tensor(factor, dtype=x.dtype, device=x.device)
    return f.reshape(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W grey levels 0.299 R + 0.587 G + 0.114 B (a one-channel image is returned as it is)."""
    if _channels(x) == 1:
        return x
    r, g, b = x.unbind(1)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """The grey image repeated on every channel (same shape as x)."""
    return rgb_to_grayscale(x).expand_as(x).contiguous()


def adjust_brightness(x: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """x·factor clamped to [0, 1]; factor >= 0, one number or one per image."""
    _channels(x)
    return (x * _per_image(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level: factor·x + (1 − factor)·mean(grey(x)), clamped."""
    _channels(x)
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, _per_image(factor, x))


def adjust_saturation(x: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Blend with the per-pixel grey image: factor·x + (1 − factor)·grey(x), clamped (one channel: unchanged)."""
    if _channels(x) == 1:
        return x.clone()
    return _blend(x, rgb_to_grayscale(x), _per_image(factor, x))


_TINY = torch.finfo(torch.float32).tiny
_SECTORS = (5.0, 3.0, 1.0)  # R, G, B: channel = v − c·clamp(min(k, 4 − k), 0, 1), k = (sector + 6·hue) mod 6


def _value_chroma_hue6(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v = max(R, G, B), chroma c = v − min(R, G, B) and 6·hue in [−1, 5) (0 for grey pixels), each N×1×H×W."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = x.amax(1, keepdim=True)
    c = v - x.amin(1, keepdim=True)
    sector = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * c, r - g + 4 * c))
    return v, c, sector / c.clamp_min(_TINY)  # grey: c = 0 and every difference is 0, so 6·hue = 0


def _from_value_chroma_hue6(v: torch.Tensor, c: torch.Tensor, hue6: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(_SECTORS, dtype=v.dtype, device=v.device).view(1, 3, 1, 1)
    k = m + hue6
    k = k - 6.0 * torch.floor(k * (1 / 6))  # mod 6 (torch.remainder is several times slower on CPU)
    return v - c * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> HSV with h in [0, 1) (h = 0 for grey pixels, s = 0 for black), N×3×H×W."""
    v, c, hue6 = _value_chroma_hue6(x)
    s = c / v.clamp_min(_TINY)  # black: c = 0 -> s = 0
    return torch.cat([torch.remainder(hue6 / 6.0, 1.0), s, v], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV (h in turns, taken mod 1) -> RGB: channel = v − v·s·clamp(min(k, 4 − k), 0, 1), k = (m + 6h) mod 6 with
    m = 5, 3, 1 for R, G, B."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _from_value_chroma_hue6(v, v * s, 6.0 * h)


def adjust_hue(x: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """Rotate the hue by shift (in turns, |shift| <= 0.5): RGB -> HSV, h <- (h + shift) mod 1, HSV -> RGB, fused
    (v·s is the chroma max − min, so s is never formed); one-channel images are unchanged."""
    if _channels(x) == 1:
        return x.clone()
    v, c, hue6 = _value_chroma_hue6(x)
    return _from_value_chroma_hue6(v, c, hue6 + 6.0 * _per_image(shift, x)).clamp_(0.0, 1.0)


OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
"""ColorJitter's four ops, in the order of its (brightness, contrast, saturation, hue) arguments."""


def check_jitter(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(brightness, contrast, saturation, hue) as floats; DataError unless the first three >= 0 and 0 <= hue <= 0.5."""
    vals = tuple(float(v) for v in values)
    if len(vals) != 4 or min(vals) < 0 or vals[3] > 0.5 or any(v != v or v == float("inf") for v in vals):
        raise DataError(f"color_jitter is [brightness, contrast, saturation, hue], each >= 0 and hue <= 0.5; "
                        f"got {values}")
    return vals  # type: ignore[return-value]


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device)
    return (low + (high - low) * u).to(device)


def color_jitter(
    x: torch.Tensor, jitter: Sequence[float], generator: torch.Generator, p: float = 1.0
) -> torch.Tensor:
    """torchvision ColorJitter(*jitter) on each image with probability p (RandomApply), in a random order per image.

    Factors: brightness, contrast, saturation ~ U[max(0, 1 − v), 1 + v], hue shift ~ U[−h, h]; an op whose value
    is 0 is skipped (as torchvision does). Every draw is made for every image whatever p and the values, so the
    generator advances by the same amount for a given batch size.
    """
    b, c, s, h = check_jitter(jitter)
    n, device = len(x), x.device
    factors = [_uniform(n, max(0.0, 1 - v), 1 + v, generator, device) for v in (b, c, s)]
    factors.append(_uniform(n, -h, h, generator, device))
    order = torch.rand(n, 4, generator=generator, device=generator.device).argsort(1).to(device)
    applied = (torch.rand(n, generator=generator, device=generator.device) < p).to(device)
    active = [j for j, v in enumerate((b, c, s, h)) if v > 0]
    return _apply_in_order(x, order, applied, factors, active, grouped=x.device.type == "cpu")


def _apply_in_order(x: torch.Tensor, order: torch.Tensor, applied: torch.Tensor, factors: list[torch.Tensor],
                    active: list[int], grouped: bool) -> torch.Tensor:
    """At each of the four steps, op j on the images whose step-th op is j. `grouped` (CPU): gather those images,
    transform, scatter back (least work; `nonzero` reads a count on the host). Otherwise (CUDA): every op on the
    whole batch, kept where chosen by `torch.where` — 4× the arithmetic, no host sync. Both give the same images."""
    x = x.clone()
    for step in range(4):
        for j in active:
            chosen = applied & (order[:, step] == j)
            if grouped:
                idx = chosen.nonzero().squeeze(1)
                if len(idx):
                    x.index_copy_(0, idx, OPS[j](x.index_select(0, idx), factors[j].index_select(0, idx)))
            else:
                x = torch.where(chosen.view(-1, 1, 1, 1), OPS[j](x, factors[j]), x)
    return x


def random_grayscale(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each image replaced by its grey version (on every channel) with probability p (torchvision RandomGrayscale)."""
    chosen = (torch.rand(len(x), generator=generator, device=generator.device) < p).to(x.device)
    return torch.where(chosen.view(-1, 1, 1, 1), grayscale(x), x)
