"""Generated "unseen" image domains: the CIFAR-scale analogue of paper 002c's sketch/edge/stylised sets, for
unseen-domain consensus (spec 002c §2 M7) and the K5 teacher's extra training domains (spec 002c §4 K5).

Every domain is a batched pure-torch function `f(x, severity=3, generator=None)` of N×C×H×W images, uint8 or float in
[0, 1], returning the same dtype, shape and device (uint8 results are rounded; CIFAR-10-C's `np.uint8` truncates).
Randomness comes only from `generator`, drawn on its device then moved (so a CPU generator gives the same images on
CPU and CUDA); without one a fresh generator seeded 0 is used, so a call is deterministic — pass your own to draw
different noise for different batches of one shape. Colour-free domains (grayscale, invert, edges) ignore severity.

CIFAR-10-C constants and formulas (severities 1–5): Hendrycks & Dietterich 2019, github hendrycks/robustness,
ImageNet-C/create_c/make_cifar_c.py (`gaussian_noise`, `gaussian_blur`, `contrast`, `brightness`), checked there.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

SEVERITIES = (1, 2, 3, 4, 5)
NOISE_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
"""gaussian_noise: σ of the additive N(0, σ²) per pixel and channel (make_cifar_c.py)."""
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
"""gaussian_blur: σ in pixels of skimage.filters.gaussian (make_cifar_c.py)."""
CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
"""contrast: c in (x − mean)·c + mean (make_cifar_c.py)."""
BRIGHTNESS_SHIFT = (0.05, 0.1, 0.15, 0.2, 0.3)
"""brightness: c added to HSV value V, clipped to [0, 1] (make_cifar_c.py)."""
LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights for R, G, B (PIL's "L" conversion)."""
BLUR_TRUNCATE = 4.0
"""Kernel radius = int(4σ + 0.5): scipy.ndimage.gaussian_filter's default, which skimage's gaussian calls."""

Domain = Callable[..., torch.Tensor]
DOMAINS: dict[str, Domain] = {}
"""Domain name → f(x, severity=3, generator=None)."""


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ConfigError(f"domain severity must be an integer in 1–5, got {severity!r}")
    return severity


def _domain(fn: Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]) -> Domain:
    """Register `fn` (float images in [0, 1] → float) under its name, wrapped to take and return uint8 or float."""

    @functools.wraps(fn)
    def wrapped(x: torch.Tensor, severity: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_severity(severity)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not (x.dtype == torch.uint8 or x.is_floating_point()):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"domain {fn.__name__} expects uint8 or float N×C×H×W images, got {got}")
        if x.dtype == torch.uint8:
            out = fn(x.float() / 255.0, severity, generator)
            return (out * 255.0).round().clamp(0, 255).to(torch.uint8)
        work = x.to(torch.promote_types(x.dtype, torch.float32))
        return fn(work, severity, generator).to(x.dtype)

    DOMAINS[fn.__name__] = wrapped
    return wrapped


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Y = 0.299R + 0.587G + 0.114B, N×1×H×W (a 1-channel image is its own luma)."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise DataError(f"colour domains need 1- or 3-channel images, got {x.shape[1]} channels")
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


@_domain
def grayscale(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """0.299R + 0.587G + 0.114B replicated to every channel (ITU-R BT.601); severity ignored."""
    return _luma(x).expand_as(x).clone()


@_domain
def invert(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """1 − x (colour inversion; spec 002c §4 K5); severity ignored."""
    return 1.0 - x


@_domain
def edges(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """√(G_x² + G_y²) of the luma with 3×3 Sobel kernels (replicate padding), divided by its per-image maximum (a flat
    image → 0), replicated to every channel: light edges on black. For sketch-like dark lines on white compose with
    `invert`. Severity ignored."""
    y = F.pad(_luma(x), (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    dx = y[..., :, 2:] - y[..., :, :-2]  # differences first, so a flat region gives exactly 0 (a conv need not)
    dy = y[..., 2:, :] - y[..., :-2, :]
    gx = dx[..., :-2, :] + 2 * dx[..., 1:h + 1, :] + dx[..., 2:, :]
    gy = dy[..., :, :-2] + 2 * dy[..., :, 1:w + 1] + dy[..., :, 2:]
    mag = (gx ** 2 + gy ** 2).sqrt()
    peak = mag.amax(dim=(1, 2, 3), keepdim=True)
    mag = torch.where(peak > 0, mag / peak.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(mag))
    return mag.expand_as(x).clone()


@_domain
def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """clip(x + N(0, σ²), 0, 1), σ = (0.04, 0.06, 0.08, 0.09, 0.10)[severity − 1] (CIFAR-10-C, make_cifar_c.py)."""
    g = _generator(generator)
    noise = torch.randn(x.shape, generator=g, device=g.device, dtype=torch.float32).to(x.device, x.dtype)
    return (x + NOISE_SIGMA[severity - 1] * noise).clamp(0.0, 1.0)


def gaussian_kernel(sigma: float, truncate: float = BLUR_TRUNCATE) -> torch.Tensor:
    """exp(−t²/2σ²) normalised, t = −r…r, r = int(truncate·σ + 0.5) (scipy.ndimage.gaussian_filter's kernel)."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


@_domain
def gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """Separable Gaussian blur per channel, σ = (0.4, 0.6, 0.7, 0.8, 1.0)[severity − 1], edge pixels replicated
    (skimage.filters.gaussian's mode="nearest", truncate 4) (CIFAR-10-C, make_cifar_c.py)."""
    k = gaussian_kernel(BLUR_SIGMA[severity - 1]).to(x.device, x.dtype)
    c, r = x.shape[1], len(k) // 2
    out = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out.clamp(0.0, 1.0)


@_domain
def contrast(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """clip((x − m)·c + m, 0, 1), m = each image's per-channel mean over pixels (as make_cifar_c.py's mean over H, W),
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity − 1] (CIFAR-10-C)."""
    m = x.mean(dim=(2, 3), keepdim=True)
    return ((x - m) * CONTRAST_FACTOR[severity - 1] + m).clamp(0.0, 1.0)


@_domain
def brightness(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
    """HSV V ← min(V + c, 1) with H, S kept, c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity − 1] (CIFAR-10-C). Exact, without
    an HSV round trip: every RGB channel is V·g(H, S), so the result is x·V'/V; black pixels (S = 0) become grey V'."""
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + BRIGHTNESS_SHIFT[severity - 1]).clamp(max=1.0)
    scaled = x * (v_new / v.clamp_min(torch.finfo(x.dtype).tiny))
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp(0.0, 1.0)


def apply_domain(name: str, x: torch.Tensor, severity: int = 3, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """DOMAINS[name](x, severity, generator); ConfigError naming the domains for an unknown name or a bad severity."""
    if name not in DOMAINS:
        raise ConfigError(f"unknown domain {name!r}; choose one of: {', '.join(DOMAINS)}")
    return DOMAINS[name](x, _check_severity(severity), generator)
