"""Teacher–student similarity measures (spec 002c §2: M3–M5 invariance, M7/M12 agreement, M10 decision boundary,
M11 CKA) and the intervals they are reported with. Pure functions: tensors (or a `Net` and pixels in [0, 1]) in,
numbers and tensors out; randomness only from the `torch.Generator` / seed passed in."""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..data.color import color_jitter
from .nets import Net, same_classes

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

SPECIAL_TAPS = ("features", "logits")
DEFAULT_TAPS = ("relu", "layer1", "layer2", "layer3", "layer4", "features", "logits")
CKA_FORMS = ("auto", "gram", "features")
TRIPLET_MODES = ("random", "classes")


# -- CKA (M11) ----------------------------------------------------------------------------------------------
class _Rep:
    """One representation: n×p float64, column-centred; its n×n Gram matrix built on first use."""

    def __init__(self, x: torch.Tensor) -> None:
        if x.ndim < 2 or len(x) < 2:
            raise ConfigError(f"CKA needs an n×p representation with n ≥ 2, got shape {tuple(x.shape)}")
        m = x.detach().reshape(len(x), -1).to(torch.float64)
        self.x = m - m.mean(0, keepdim=True)
        self.n, self.p = self.x.shape
        self._gram: torch.Tensor | None = None
        self._self: dict[tuple[bool, str], float] = {}

    def gram(self) -> torch.Tensor:
        if self._gram is None:
            self._gram = self.x @ self.x.T
        return self._gram

    def self_hsic(self, debiased: bool, form: str) -> float:
        key = (debiased, form)
        if key not in self._self:
            self._self[key] = _hsic(self, self, debiased, form)
        return self._self[key]


def _unbiased(tr: torch.Tensor, sk: torch.Tensor, sl: torch.Tensor, kl1: torch.Tensor, n: int) -> float:
    """HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)) (Song et al. 2012, eq. 5)."""
    return float((tr + sk * sl / ((n - 1) * (n - 2)) - 2.0 * kl1 / (n - 2)) / (n * (n - 3)))


def _hsic_gram(k: torch.Tensor, l: torch.Tensor, debiased: bool) -> float:
    """tr(KL) = Σ K∘L on centred Grams; debiased: HSIC₁ on K̃, L̃ = K, L with zeroed diagonals."""
    if not debiased:
        return float((k * l).sum())
    k = k - torch.diag_embed(torch.diagonal(k))
    l = l - torch.diag_embed(torch.diagonal(l))
    return _unbiased((k * l).sum(), k.sum(), l.sum(), k.sum(1) @ l.sum(1), len(k))


def _hsic_features(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> float:
    """‖YᵀX‖²_F; debiased, X and Y centred: K̃1 = −diag K, so tr(K̃L̃) = ‖YᵀX‖² − Σkᵢᵢlᵢᵢ, 1ᵀK̃1 = −Σkᵢᵢ,
    1ᵀK̃L̃1 = Σkᵢᵢlᵢᵢ (the Gram form's terms without an n×n matrix)."""
    cross = float((y.T @ x).square().sum())
    if not debiased:
        return cross
    kd, ld = x.square().sum(1), y.square().sum(1)
    return _unbiased(cross - kd @ ld, -kd.sum(), -ld.sum(), kd @ ld, len(x))


def _hsic(a: _Rep, b: _Rep, debiased: bool, form: str) -> float:
    """Gram form when `form` says so or (auto) when n < max(p, q): then n×n is the smallest matrix to build."""
    if form == "gram" or (form == "auto" and a.n < max(a.p, b.p)):
        return _hsic_gram(a.gram(), b.gram(), debiased)
    return _hsic_features(a.x, b.x, debiased)


def _cka(a: _Rep, b: _Rep, debiased: bool, form: str) -> float:
    if a.n != b.n:
        raise ConfigError(f"CKA compares representations of the same images: got n = {a.n} and n = {b.n}")
    if debiased and a.n < 4:
        raise ConfigError(f"debiased CKA needs n ≥ 4 images, got {a.n}")
    if form not in CKA_FORMS:
        raise ConfigError(f"unknown CKA form {form!r}; choose one of: {', '.join(CKA_FORMS)}")
    aa, bb = a.self_hsic(debiased, form), b.self_hsic(debiased, form)
    if not (aa > 0 and bb > 0):
        return float("nan")  # a constant representation (or a non-positive HSIC₁ estimate): CKA undefined
    return _hsic(a, b, debiased, form) / math.sqrt(aa * bb)


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False, form: str = "auto") -> float:
    """CKA = HSIC(K, L)/√(HSIC(K, K)·HSIC(L, L)), K = XXᵀ, L = YYᵀ on column-centred n×p, n×q (trailing dims
    flattened, float64). Biased: HSIC = ‖YᵀX‖²_F = tr(KL), i.e. ‖YᵀX‖²_F/(‖XᵀX‖_F‖YᵀY‖_F) (Kornblith et al. 2019,
    eq. 5). Debiased: HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1]/(n(n−3)), K̃ = K with zero
    diagonal (Song et al. 2012; Nguyen et al. 2021), n ≥ 4, may be < 0. `form`: auto (n×n Gram form when
    n < max(p, q), else the p×q feature form), gram, features — all equal. NaN for a constant representation."""
    return _cka(_Rep(x), _Rep(y), debiased, form)


def cka_matrix(taps_a: dict[str, torch.Tensor], taps_b: dict[str, torch.Tensor],
               debiased: bool = False) -> tuple[list[str], list[str], torch.Tensor]:
    """(names_a, names_b, M) with M[i, j] = linear CKA(taps_a[i], taps_b[j]) (spec 002c M11, paper Fig. 9)."""
    reps_a = {k: _Rep(v) for k, v in taps_a.items()}
    reps_b = {k: _Rep(v) for k, v in taps_b.items()}
    matrix = torch.tensor([[_cka(ra, rb, debiased, "auto") for rb in reps_b.values()] for ra in reps_a.values()],
                          dtype=torch.float64)
    return list(reps_a), list(reps_b), matrix.reshape(len(reps_a), len(reps_b))


# -- layer taps ---------------------------------------------------------------------------------------------
def tap_names(model: nn.Module) -> list[str]:
    """The readable taps: top-level modules, the children of top-level containers (`layerK.i`), then the specials."""
    names = []
    for name, child in model.named_children():
        if not isinstance(child, (nn.ModuleList, nn.ModuleDict)):  # containers that never run are no taps
            names.append(name)
        if isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            names += [f"{name}.{sub}" for sub, _ in child.named_children()]
    return names + list(SPECIAL_TAPS)


def default_taps(net: Net) -> tuple[str, ...]:
    """Spec 002c K7's seven taps: stem (`relu` after conv1/bn1, else `conv1`), four stages, pooled, logits."""
    stem = "relu" if "relu" in dict(net.model.named_modules()) else "conv1"
    return (stem, *DEFAULT_TAPS[1:])


def _rows(t: torch.Tensor) -> torch.Tensor:
    """N×… → N×d float32 CPU copy (a copy: in-place activations may overwrite the hooked tensor later)."""
    return t.detach().flatten(1).to(device="cpu", dtype=torch.float32, copy=True)


@torch.no_grad()
def layer_taps(net: Net, x01: torch.Tensor, taps: Sequence[str] | None = None,
               batch_size: int = 256) -> dict[str, torch.Tensor]:
    """{tap: N×d} — outputs of named modules (forward hooks, names of `net.model.named_modules()`), `features`
    (pooled) and `logits` (the net's head), on pixels x01 in [0, 1]; taps default to `default_taps(net)`."""
    taps = tuple(default_taps(net) if taps is None else taps)
    modules = dict(net.model.named_modules())
    unknown = [t for t in taps if t not in SPECIAL_TAPS and (not t or t not in modules)]
    if unknown:
        raise ConfigError(f"unknown tap(s) {unknown}; valid taps: {', '.join(tap_names(net.model))} "
                          "(or any name in model.named_modules())")
    if len(set(taps)) != len(taps) or not taps:
        raise ConfigError(f"taps must be a non-empty list of distinct names, got {list(taps)}")
    if len(x01) == 0 or batch_size < 1:
        raise ConfigError(f"layer_taps needs images and batch_size ≥ 1, got {len(x01)} images, batch {batch_size}")
    hooked = [t for t in taps if t not in SPECIAL_TAPS]
    calls: dict[str, list[torch.Tensor]] = {t: [] for t in hooked}
    chunks: dict[str, list[torch.Tensor]] = {t: [] for t in taps}

    def hook(name: str):
        def record(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ConfigError(f"module {name!r} returns {type(output).__name__}, not a tensor; tap another")
            calls[name].append(_rows(output))
        return record

    handles = [modules[t].register_forward_hook(hook(t)) for t in hooked]
    try:
        for start in range(0, len(x01), batch_size):
            for t in hooked:
                calls[t].clear()
            out = net.output(x01[start:start + batch_size])
            for t in hooked:
                if len(calls[t]) != 1:
                    raise ConfigError(f"module {t!r} ran {len(calls[t])} times in one forward pass; tap a module "
                                      f"that runs once (e.g. its block): {', '.join(tap_names(net.model))}")
                chunks[t].append(calls[t][0])
            if "features" in chunks:
                chunks["features"].append(_rows(out.features))
            if "logits" in chunks:
                chunks["logits"].append(_rows(out.logits[net.head]))
    finally:
        for h in handles:
            h.remove()
    return {t: torch.cat(chunks[t]) for t in taps}


# -- agreement (M7, M12) ------------------------------------------------------------------------------------
def _labels(pred) -> torch.Tensor:
    return torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred).detach().cpu().long()


def agreement(pred_a, pred_b, labels=None) -> dict[str, float]:
    """Top-1 agreement 100·mean(a = b) (%); with labels also both_right, both_wrong, one_right (sum 100),
    same_error (both wrong with the same label, % of all) and error_agreement (same_error among both_wrong, %)."""
    a, b = _labels(pred_a).reshape(-1), _labels(pred_b).reshape(-1)
    if a.shape != b.shape or len(a) == 0:
        raise ConfigError(f"agreement compares two non-empty prediction vectors of equal length, "
                          f"got {len(a)} and {len(b)}")
    def pct(mask: torch.Tensor) -> float:
        return 100.0 * float(mask.double().mean())

    out = {"n": len(a), "agreement": pct(a == b)}
    if labels is not None:
        y = _labels(labels).reshape(-1)
        if y.shape != a.shape:
            raise ConfigError(f"{len(y)} labels for {len(a)} predictions")
        ra, rb = a == y, b == y
        both_wrong = ~ra & ~rb
        same_error = both_wrong & (a == b)
        out.update(both_right=pct(ra & rb), both_wrong=pct(both_wrong), one_right=pct(ra ^ rb),
                   same_error=pct(same_error),
                   error_agreement=(100.0 * float(same_error.sum()) / float(both_wrong.sum())
                                    if bool(both_wrong.any()) else float("nan")))
    return out


def consensus(teacher: Net, student: Net, x01: torch.Tensor, batch_size: int = 256) -> float:
    """% of images with argmax S = argmax T, correctness ignored (paper §4.4, spec 002c M7/M12)."""
    same_classes(teacher, [student])
    return agreement(teacher.predict(x01, batch_size), student.predict(x01, batch_size))["agreement"]


# -- invariance (M3–M5) -------------------------------------------------------------------------------------
def _uniform(shape, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    """U[low, high] float64 drawn on the generator's device (same draws on any data device), moved to `device`."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return (low + (high - low) * u).to(device)


def identity(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The untransformed images (draws nothing)."""
    return x01


def color_transform(strength: float, hue: float | None = None) -> Transform:
    """torchvision ColorJitter(brightness=s, contrast=s, saturation=s, hue=h) per image, the training-time op
    (`data.color.color_jitter`): factors ~ U[max(0, 1−s), 1+s], hue shift ~ U[−h, h] (None = no hue step), the four
    steps in a random order per image (spec 002c M3, §6.3: s is torchvision's factor range, not a 'magnitude ~ U[0, s]')."""
    if not strength >= 0:
        raise ConfigError(f"colour strength must be ≥ 0, got {strength}")
    if hue is not None and not 0 <= hue <= 0.5:
        raise ConfigError(f"hue must be in [0, 0.5] (torchvision's range) or None, got {hue}")

    def transform(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return color_jitter(x01, [strength, strength, strength, hue or 0.0], generator)

    return transform


def crop_transform(area: float, aspect: tuple[float, float] = (3 / 4, 4 / 3)) -> Transform:
    """A random crop of `area`·H·W pixels, aspect w/h ~ log-U[aspect] (narrowed to the ratios whose crop fits, so
    the area is exact), position uniform, resized back to H×W bilinearly (affine_grid + grid_sample,
    align_corners=False) — RandomResizedCrop at a fixed scale, continuous offsets (spec 002c M4, paper §11.3)."""
    if not 0 < area <= 1:
        raise ConfigError(f"crop area must be in (0, 1], got {area}")
    if not 0 < aspect[0] <= aspect[1]:
        raise ConfigError(f"aspect must be (low, high) with 0 < low ≤ high, got {aspect}")

    def transform(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x01.shape
        lo, hi = max(aspect[0], area * w / h), min(aspect[1], w / (area * h))
        if lo > hi:
            raise ConfigError(f"no crop of area {area} with aspect in {aspect} fits a {h}×{w} image")
        ratio = torch.exp(_uniform(n, math.log(lo), math.log(hi), generator, "cpu"))
        cw = torch.sqrt(area * ratio * h / w).clamp(max=1.0)  # crop width / W
        ch = torch.sqrt(area * w / (ratio * h)).clamp(max=1.0)  # crop height / H
        u = _uniform((n, 2), 0.0, 1.0, generator, "cpu")
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 1, 1] = cw, ch
        theta[:, 0, 2], theta[:, 1, 2] = (1 - cw) * (2 * u[:, 0] - 1), (1 - ch) * (2 * u[:, 1] - 1)
        grid = F.affine_grid(theta.to(device=x01.device, dtype=x01.dtype), list(x01.shape), align_corners=False)
        return F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)

    return transform


def shift_transform(max_shift: int) -> Transform:
    """Translate each image by (dy, dx) ~ U{−m..m}² pixels: reflect-pad by m, crop H×W at offset (m + dy, m + dx)
    (torchvision RandomCrop(size, padding=m, padding_mode="reflect"); spec 002c M5's CIFAR analogue)."""
    if int(max_shift) != max_shift or max_shift < 0:
        raise ConfigError(f"max_shift must be an integer ≥ 0, got {max_shift}")
    m = int(max_shift)

    def transform(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if m == 0:
            return x01
        n, _, h, w = x01.shape
        if m >= min(h, w):
            raise ConfigError(f"max_shift {m} needs images larger than {m} pixels (reflect padding), got {h}×{w}")
        d = torch.randint(0, 2 * m + 1, (n, 2), generator=generator, device=generator.device).to(x01.device)
        padded = F.pad(x01, (m, m, m, m), mode="reflect")
        rows = d[:, :1] + torch.arange(h, device=x01.device)
        cols = d[:, 1:] + torch.arange(w, device=x01.device)
        batch = torch.arange(n, device=x01.device).view(n, 1, 1)
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()

    return transform


@torch.no_grad()
def invariance_hits(net: Net, x01: torch.Tensor, transform_a: Transform, transform_b: Transform,
                    generator: torch.Generator, batch_size: int = 256) -> torch.Tensor:
    """Per image: argmax f(a(x)) = argmax f(b(x)) (bool, CPU); per batch a then b draw from `generator`, so equal
    seeds and batch sizes give every net the very same transformed images (spec 002c M3–M5)."""
    if len(x01) == 0 or batch_size < 1:
        raise ConfigError(f"invariance needs images and batch_size ≥ 1, got {len(x01)} images, batch {batch_size}")
    hits = []
    for start in range(0, len(x01), batch_size):
        xb = x01[start:start + batch_size]
        xa, xbb = transform_a(xb, generator), transform_b(xb, generator)
        hits.append(net.predict(xa, batch_size) == net.predict(xbb, batch_size))
    return torch.cat(hits)


def invariance_agreement(net: Net, x01: torch.Tensor, transform_a: Transform, transform_b: Transform,
                         generator: torch.Generator, batch_size: int = 256) -> float:
    """% of images with argmax f(a(x)) = argmax f(b(x)) (paper §4.3 eq. for X, X'; Tables 7–10)."""
    hits = invariance_hits(net, x01, transform_a, transform_b, generator, batch_size)
    return 100.0 * float(hits.double().mean())


# -- decision boundaries (M10) ------------------------------------------------------------------------------
class Plane(NamedTuple):
    """A grid on the plane through three images: `images` R²×C×H×W = origin + coords @ basis (row i·R + j is
    (u_i, v_j)), `coords` R²×2, `anchors` 3×2 = the plane coordinates of x1, x2, x3, `basis` 2×C×H×W orthonormal."""

    images: torch.Tensor
    coords: torch.Tensor
    anchors: torch.Tensor
    origin: torch.Tensor
    basis: torch.Tensor


def plane_grid(x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, resolution: int = 50,
               margin: float = 0.1) -> Plane:
    """Plane through x1, x2, x3 (Gram–Schmidt e₁ ∝ x2−x1, e₂ ∝ the rest of x3−x1; x1 at (0, 0)); R×R grid over the
    anchors' bounding box widened by margin·side each way (Somepalli et al. 2022, dbViz `plane_dataset`; spec 002c
    §6.7). Built in pixel space and NOT clamped: like Somepalli's planes, grid points may leave [0, 1]."""
    if not (x1.shape == x2.shape == x3.shape):
        raise ConfigError(f"the three images differ in shape: {tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(x3.shape)}")
    if resolution < 2 or margin < 0:
        raise ConfigError(f"plane grid needs resolution ≥ 2 and margin ≥ 0, got {resolution} and {margin}")
    o = x1.detach().reshape(-1).to(torch.float64)
    a = x2.detach().reshape(-1).to(torch.float64) - o
    b = x3.detach().reshape(-1).to(torch.float64) - o
    na = a.norm()
    e1 = a / na
    b1 = e1 @ b
    rest = b - b1 * e1
    nb = rest.norm()
    if not (na > 0 and nb > 1e-9 * max(float(na), float(b.norm()))):
        raise ConfigError("the three images are (nearly) collinear or repeated; they span no plane")
    e2 = rest / nb
    anchors = torch.stack([torch.zeros(2, dtype=torch.float64), torch.stack([na, torch.zeros_like(na)]),
                           torch.stack([b1, e2 @ b])])
    lo, hi = anchors.min(0).values, anchors.max(0).values
    pad = margin * (hi - lo)
    u = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), resolution, dtype=torch.float64)
    v = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), resolution, dtype=torch.float64)
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    coords = torch.stack([uu.reshape(-1), vv.reshape(-1)], 1)
    basis = torch.stack([e1, e2])
    images = (o + coords @ basis).reshape(-1, *x1.shape).to(device=x1.device, dtype=x1.dtype)
    return Plane(images, coords, anchors, x1.detach(), basis.reshape(2, *x1.shape).to(x1.dtype))


def _class_iou(pa: torch.Tensor, pb: torch.Tensor) -> float:
    """mean over classes c predicted by either net of |A_c ∩ B_c| / |A_c ∪ B_c| (spec 002c §6.7)."""
    classes = torch.unique(torch.cat([pa, pb]))
    a, b = pa[None] == classes[:, None], pb[None] == classes[:, None]
    return float(((a & b).sum(1).double() / (a | b).sum(1).double()).mean())


def plane_predictions(net: Net, triplets: torch.Tensor, resolution: int = 50, margin: float = 0.1,
                      batch_size: int = 256) -> list[torch.Tensor]:
    """The net's labels on the resolution² grid of each triplet's plane (`plane_grid`), one tensor per triplet."""
    if triplets.ndim < 3 or triplets.shape[1] != 3 or len(triplets) == 0:
        raise ConfigError(f"triplets must be T×3×C×H×W images (T ≥ 1), got shape {tuple(triplets.shape)}")
    return [net.predict(plane_grid(x1, x2, x3, resolution, margin).images, batch_size) for x1, x2, x3 in triplets]


def boundary_from_predictions(preds_a: list[torch.Tensor], preds_b: list[torch.Tensor]) -> dict:
    """`iou` = mean over planes of the class-mean IoU of two nets' grid labels, `agreement` = mean fraction of grid
    points labelled alike (fractions in [0, 1]; both reported, spec 002c §6.7), and the per-plane values."""
    iou = torch.tensor([_class_iou(a, b) for a, b in zip(preds_a, preds_b)], dtype=torch.float64)
    agree = torch.tensor([float((a == b).double().mean()) for a, b in zip(preds_a, preds_b)], dtype=torch.float64)
    return {"iou": float(iou.mean()), "agreement": float(agree.mean()), "iou_per_triplet": iou,
            "agreement_per_triplet": agree, "triplets": len(preds_a)}


def boundary_similarity(net_a: Net, net_b: Net, triplets: torch.Tensor, resolution: int = 50,
                        margin: float = 0.1, batch_size: int = 256) -> dict:
    """Decision-boundary similarity over T×3×C×H×W image triplets (paper §6 Table 1, Somepalli et al. 2022):
    `boundary_from_predictions` of both nets' `plane_predictions`."""
    same_classes(net_a, [net_b])
    out = boundary_from_predictions(plane_predictions(net_a, triplets, resolution, margin, batch_size),
                                    plane_predictions(net_b, triplets, resolution, margin, batch_size))
    return {**out, "resolution": resolution, "margin": margin}


def sample_triplets(labels, n: int, generator: torch.Generator, mode: str = "random") -> torch.Tensor:
    """n×3 image indices: `random` = three distinct images; `classes` = one random image of each of three distinct
    random classes (index into the images whose `labels` are given; spec 002c K6: 50 triplets)."""
    y = _labels(labels).reshape(-1)
    if mode not in TRIPLET_MODES:
        raise ConfigError(f"unknown triplet mode {mode!r}; choose one of: {', '.join(TRIPLET_MODES)}")
    if n < 1 or len(y) < 3:
        raise ConfigError(f"need n ≥ 1 triplets from ≥ 3 images, got n = {n} from {len(y)} images")
    if mode == "random":
        return torch.rand(n, len(y), generator=generator, device=generator.device).argsort(1)[:, :3].cpu()
    classes, inverse = torch.unique(y, return_inverse=True)
    if len(classes) < 3:
        raise ConfigError(f"mode 'classes' needs ≥ 3 classes, the labels have {len(classes)}")
    chosen = torch.rand(n, len(classes), generator=generator, device=generator.device).argsort(1)[:, :3].cpu()
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=len(classes))
    starts = torch.cumsum(counts, 0) - counts
    u = torch.rand(n, 3, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    offset = torch.minimum((u * counts[chosen]).long(), counts[chosen] - 1)
    return order[starts[chosen] + offset]


# -- intervals ----------------------------------------------------------------------------------------------
class Interval(NamedTuple):
    """A point estimate with its two-sided interval at `confidence` over `n` samples."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float


def min_n(confidence: float = 0.95) -> int:
    """The fewest samples we report an interval for: max(10, ⌈0.5/(1 − c)⌉) (10 at 95 %, 50 at 99 %) — a floor, not
    a power analysis."""
    _check_confidence(confidence)
    return max(10, math.ceil(0.5 / (1 - confidence) - 1e-9))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")


def _enough(n: int, confidence: float) -> None:
    need = min_n(confidence)
    if n < need:
        raise ConfigError(f"too few images ({n}) for a {100 * confidence:g}% interval; pass at least {need}")


def binomial_ci(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """k/n with the Wilson score interval (Wilson 1927; scipy.stats.binomtest(...).proportion_ci(method="wilson")),
    as proportions in [0, 1]."""
    from scipy.stats import binomtest

    if int(successes) != successes or int(n) != n or not 0 <= successes <= n:
        raise ConfigError(f"binomial_ci needs integers 0 ≤ successes ≤ n, got {successes} of {n}")
    _enough(int(n), confidence)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(int(successes) / int(n), float(ci.low), float(ci.high), int(n), confidence)


def _values(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ConfigError("bootstrap values must be finite (drop NaN/inf first)")
    return v


def bootstrap_ci(values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """mean(values) with the percentile bootstrap interval: quantiles α/2, 1 − α/2 of n_boot resample means
    (Efron & Tibshirani 1993, ch. 13; numpy Generator seeded by `seed`)."""
    v = _values(values)
    _enough(len(v), confidence)
    if n_boot < 1:
        raise ConfigError(f"n_boot must be ≥ 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    chunk = max(1, 10_000_000 // len(v))  # bounded memory: at most ~10⁷ resampled indices at a time
    means = np.concatenate([v[rng.integers(0, len(v), (min(chunk, n_boot - s), len(v)))].mean(1)
                            for s in range(0, n_boot, chunk)])
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(v.mean()), float(low), float(high), len(v), confidence)


def paired_bootstrap_diff(a, b, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """mean(a − b) over per-image pairs with its percentile bootstrap interval (images resampled jointly)."""
    va, vb = _values(a), _values(b)
    if va.shape != vb.shape:
        raise ConfigError(f"paired values must have equal length, got {len(va)} and {len(vb)}")
    return bootstrap_ci(va - vb, confidence, n_boot, seed)
