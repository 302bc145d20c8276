"""Layer weight spectra and heavy-tailed power-law fits (HT-SR: Martin & Mahoney; TempBalance, paper 002).

Conventions, taken from the reference implementations and kept identical to them:

* Spectrum of a layer (TempBalance `net_esd_estimator`, WeightWatcher `analyze(pool=True, conv2d_norm=True)`):
  a Linear weight W gives the eigenvalues of WᵀW (squared singular values, min(out, in) of them); a Conv2d
  kernel (out, in, kh, kw) is cut into its kh·kw slices of shape out × in, each scaled by √0.5, and the squared
  singular values of all slices are pooled into one spectrum (kh·kw·min(out, in) eigenvalues), sorted ascending.
* `xmin="median"` (TempBalance's default): no eigenvalue is dropped, λ_min = λ[int(N/2)] of the ascending
  spectrum, tail = λ[i:], Hill estimate α = 1 + n / Σ ln(λ/λ_min).
* `xmin="ks"` (WeightWatcher's default `analyze()` fit, its own `ww` power-law package, xmax=None): eigenvalues
  ≤ 1e-5 are dropped; every remaining eigenvalue but the largest is a candidate λ_min = λ[i]; for each, α_i is
  the Hill estimate on the tail λ[i:] (n_i = N − i values) and D_i = max_j |1 − (λ_j/λ_i)^(1−α_i) − (j−i)/n_i|
  (the fitted Pareto CDF against the empirical CDF taken at its lower step, as WeightWatcher does); candidates
  with α_i ≤ 1 get D_i = 1; the candidate with the smallest D wins (first one on ties). Spectra with fewer than
  20 kept eigenvalues follow WeightWatcher's small-N variant: bias-corrected α = 1 + (n−1)/Σ ln(λ/λ_min), only
  tails of at least 8 values, still chosen by the smallest D.

Everything is computed with torch on the weights' device: one batched `eigvalsh` call per layer, and the KS
search is vectorised (a coarse lower bound of every D_i on a per-tail grid, then exact D_i only for the
candidates whose bound can still beat the best exact value) — the same answer as the exhaustive search.
"""
from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write_text
from ..errors import CheckpointError, ConfigError, DataError

CONV_NORM = 0.5            # squared scale of each conv slice (TempBalance conv_norm; WeightWatcher conv2d_norm)
EVALS_THRESH = 1e-5        # eigenvalues ≤ this are dropped before the KS fit (WeightWatcher EVALS_THRESH)
SMALL_N = 20               # fewer kept eigenvalues → WeightWatcher's small-N fit (WW_powerlaw SMALL_N_CUTOFF)
SMALL_N_MIN_TAIL = 8       # small-N fit: shortest tail considered (WW_powerlaw k_min)
OVER_TRAINED_BELOW = 2.0   # WeightWatcher's warnings: α < 2 "over-trained", α > 6 "under-trained"
UNDER_TRAINED_ABOVE = 6.0
#: fewest tail eigenvalues for a fit to be read: the Hill estimate's standard error is (α − 1)/√n_tail (over 14 %
#: of α − 1 below 50) and its small-sample bias grows as n_tail shrinks; Clauset, Shalizi & Newman (2009,
#: "Power-law distributions in empirical data") give n ≳ 50 as the rule of thumb for reliable estimates. A fit on
#: fewer is flagged unreliable, not read as over- or under-trained.
MIN_TAIL = 50
UNRELIABLE = f"n_tail < {MIN_TAIL}: unreliable"
XMIN_MODES = ("median", "ks")
ROW_FIELDS = ("name", "kind", "shape", "num_evals", "alpha", "xmin", "ks_distance", "n_tail", "reliable", "lambda_max",
              "alpha_weighted", "log_alpha_norm", "stable_rank", "warning")

_GRIDS = (16, 512)          # points per candidate tail for the coarse, then the fine KS lower bound
_BLOCK_ELEMENTS = 1 << 21   # candidate-rows × tail-columns evaluated at once in the exact KS pass
_FIRST_BLOCK = 16           # candidate rows in the first exact block (doubling after each block)


@dataclass(frozen=True)
class PowerLawFit:
    """A power-law tail fit: exponent α, tail start λ_min, KS distance D, and the n eigenvalues in the tail."""

    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int


_FAILED = PowerLawFit(math.nan, math.nan, math.nan, 0)


# ---------------------------------------------------------------------------------------------- spectra


def weight_spectrum(weight: torch.Tensor, conv_norm: float = CONV_NORM) -> torch.Tensor:
    """Ascending float64 eigenvalues: σ(W)² for a 2-D W; for a 4-D kernel, σ(√conv_norm·W[:, :, i, j])² pooled
    over all kh·kw slices (TempBalance net_esd_estimator / WeightWatcher conv2D_Wmats + conv2d_norm).

    Computed as the eigenvalues of the float64 Gram matrix on the smaller side (one batched `eigvalsh` over
    all slices on the weight's device): the same numbers as squared `svdvals`, float64-accurate like
    WeightWatcher's SciPy SVD, and faster on CPU than float32 `svdvals`."""
    w = weight.detach()
    if w.ndim == 4:
        w = torch.flatten(w, start_dim=2).permute(2, 0, 1)  # (kh·kw, out, in)
    elif w.ndim != 2:
        raise DataError(f"expected a 2-D (linear) or 4-D (conv) weight, got shape {tuple(w.shape)}")
    if w.device.type == "mps":  # no float64 on MPS
        w = w.cpu()
    w = w.to(torch.float64)
    if weight.ndim == 4:
        w = w * math.sqrt(conv_norm)
    if not bool(torch.isfinite(w).all()):
        raise DataError("weight has NaN or infinite entries; the model diverged — analyse an earlier checkpoint")
    gram = w @ w.mT if w.shape[-2] <= w.shape[-1] else w.mT @ w
    evals = torch.linalg.eigvalsh(gram).clamp_min_(0.0)
    return torch.sort(evals.flatten()).values


def _layers(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            yield name, "conv", m.weight
        elif isinstance(m, nn.Linear):
            yield name, "linear", m.weight


def layer_spectra(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: ascending eigenvalues} for every nn.Conv2d / nn.Linear, per `weight_spectrum`
    (eigenvalues of WᵀW; conv: the kh·kw slices ×√0.5 pooled — TempBalance / WeightWatcher)."""
    out = {}
    for name, _kind, w in _layers(model):
        try:
            out[name] = weight_spectrum(w)
        except DataError as e:
            raise DataError(f"layer {name!r}: {e}") from None
    return out


# ---------------------------------------------------------------------------------------------- fits


def _as_eigenvalues(eigenvalues) -> torch.Tensor:
    x = eigenvalues if isinstance(eigenvalues, torch.Tensor) else torch.as_tensor(eigenvalues)
    if x.ndim != 1:
        raise DataError(f"eigenvalues must be a 1-D tensor, got shape {tuple(x.shape)}")
    if x.device.type == "mps":
        x = x.cpu()
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise DataError("eigenvalues contain NaN or infinite values")
    return torch.sort(x).values


def fit_power_law(eigenvalues, xmin: str = "median") -> PowerLawFit:
    """Hill/MLE fit α = 1 + n / Σᵢ ln(λᵢ/λ_min) over the n eigenvalues of the tail λ ≥ λ_min; λ_min = the
    median (TempBalance, xmin="median") or the KS-optimal candidate (WeightWatcher analyze(), xmin="ks")."""
    if xmin not in XMIN_MODES:
        raise ConfigError(f"unknown xmin {xmin!r}; choose one of: {', '.join(XMIN_MODES)}")
    x = _as_eigenvalues(eigenvalues)
    if xmin == "median":
        return _fit_median(x)
    x = x[x > EVALS_THRESH]
    if x.numel() < 2:
        return _FAILED
    if x.numel() < SMALL_N:
        return _fit_ks_small(x)
    return _fit_ks(x)


def _fit_median(x: torch.Tensor) -> PowerLawFit:
    """TempBalance pl_fitting='median', xmin_pos=2: i = int(N/2), tail λ[i:], no eigenvalue dropped."""
    n_all = x.numel()
    if n_all == 0:
        return _FAILED
    i = int(n_all / 2)
    tail = x[i:]
    lam_min = tail[0]
    if lam_min <= 0:
        return PowerLawFit(math.nan, float(lam_min), math.nan, tail.numel())
    logs = torch.log(tail)
    n = tail.numel()
    denom = torch.sum(logs) - n * logs[0]
    if not denom > 0:  # a tail of identical values has no finite exponent
        return PowerLawFit(math.nan, float(lam_min), math.nan, n)
    alpha = 1 + n / denom
    seq = torch.arange(n, dtype=x.dtype, device=x.device) / n
    d = torch.max(torch.abs(1 - torch.exp((1 - alpha) * (logs - logs[0])) - seq))
    return PowerLawFit(float(alpha), float(lam_min), float(d), n)


def _candidate_alphas(logs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α_i = 1 + n_i / (Σ_{j≥i} ln λ_j − n_i ln λ_i) for every candidate i < N−1, with n_i = N − i."""
    N = logs.numel()
    suffix = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])[:-1]
    n = torch.arange(N, 1, -1, dtype=logs.dtype, device=logs.device)
    alpha = 1 + n / (suffix - n * logs[:-1])
    return alpha, n


def _ks_deviation(logs: torch.Tensor, slope: torch.Tensor, n: torch.Tensor, cand: torch.Tensor,
                  offs: torch.Tensor) -> torch.Tensor:
    """|1 − (λ_{i+k}/λ_i)^(1−α_i) − k/n_i| for candidates i = cand[r] at tail offsets k = offs[r, c]."""
    dt = logs.dtype
    i = cand[:, None]
    return torch.abs(1 - torch.exp(slope[i] * (logs[i + offs] - logs[i])) - offs.to(dt) / n[i])


def _ks_lower_bound(logs, slope, n, cand, grid: int) -> torch.Tensor:
    """max of the KS deviation over grid+1 points spread evenly over each candidate's tail: ≤ D_i."""
    k = torch.arange(grid + 1, device=logs.device, dtype=logs.dtype) / grid
    step = max(1, _BLOCK_ELEMENTS // (grid + 1))
    parts = []
    for c in cand.split(step):
        offs = torch.round(k[None, :] * (n[c, None] - 1)).long()
        parts.append(_ks_deviation(logs, slope, n, c, offs).max(dim=1).values)
    return torch.cat(parts)


def _fit_ks(x: torch.Tensor) -> PowerLawFit:
    """WeightWatcher WWFit.fit_power_law_standard: argmin over candidates of the KS distance D_i (see module doc).

    Exact, but pruned: a coarse lower bound of every D_i, a finer one for the candidates that can still win,
    then exact D_i in order of the bound until no bound is below the best exact D."""
    N = x.numel()
    dev = x.device
    logs = torch.log(x)
    alpha, n = _candidate_alphas(logs)
    C = N - 1
    valid = torch.isfinite(alpha) & (alpha > 1)
    slope = torch.where(valid, 1 - alpha, torch.zeros_like(alpha))  # exponent 1 − α_i
    D = torch.where(valid, torch.full_like(alpha, math.inf), torch.ones_like(alpha))  # α_i ≤ 1: D_i = 1
    cand = torch.nonzero(valid).flatten()
    if cand.numel() == 0:
        return PowerLawFit(float(alpha[0]), float(x[0]), 1.0, N)
    max_rows = max(1, _BLOCK_ELEMENTS // N)  # candidate rows per exact block, bounded by memory

    def exact(rows: torch.Tensor) -> float:
        width = N - int(rows.min())
        offs = torch.arange(width, device=dev)[None, :].expand(rows.numel(), width)
        inside = offs < n[rows, None].long()
        dev_ = _ks_deviation(logs, slope, n, rows, torch.where(inside, offs, 0))
        D[rows] = torch.where(inside, dev_, torch.zeros_like(dev_)).max(dim=1).values
        return float(D[rows].min())

    best = 1.0 if bool((~valid).any()) else math.inf
    for level, grid in enumerate(_GRIDS):
        lower = _ks_lower_bound(logs, slope, n, cand, min(grid, C))
        order = torch.argsort(lower, stable=True)
        cand, lower = cand[order], lower[order]
        if level == 0:  # a good `best` early: exact D of the few most promising candidates
            best = min(best, exact(cand[: min(_FIRST_BLOCK, max_rows)]))
        keep = lower <= best
        cand, lower = cand[keep], lower[keep]
        if cand.numel() <= _FIRST_BLOCK:
            break
    # exact D_i in order of the bound, stopping when the next bound exceeds the best exact D
    lower_list = lower.tolist()
    rows, start = min(_FIRST_BLOCK, max_rows), 0
    while start < len(lower_list) and lower_list[start] <= best:
        stop = min(start + rows, bisect.bisect_right(lower_list, best))
        rows = min(2 * rows, max_rows)
        block = cand[start:stop]
        block = block[torch.isinf(D[block])]
        if block.numel():
            best = min(best, exact(block))
        start = stop
    # candidates never evaluated exactly have D_i ≥ bound > best; first index among the minima wins
    i = int(torch.argmin(D))
    return PowerLawFit(float(alpha[i]), float(x[i]), float(D[i]), int(N - i))


def _fit_ks_small(x: torch.Tensor) -> PowerLawFit:
    """WeightWatcher WWFit small-N path (N < 20) as analyze() ends up using it: candidates with a tail of ≥ 8
    values, Σ ln(λ/λ_i) > 1e-12 and bias-corrected α = 1 + (n−1)/Σ ln(λ/λ_i) > 1; the smallest KS distance
    wins (WWFit.__init__ re-selects by argmin D after fit_powerlaw_smallN, so its D − 0.868/√n objective
    does not decide). No such candidate: the whole spectrum is the tail."""
    N = x.numel()
    dev, dt = x.device, x.dtype
    logs = torch.log(x)
    C = N - 1
    i = torch.arange(C, device=dev)
    n = (N - i).to(dt)
    j = torch.arange(N, device=dev)
    offs = (j[None, :] - i[:, None]).to(dt)
    inside = offs >= 0
    s = torch.where(inside, logs[None, :] - logs[:C, None], torch.zeros((), dtype=dt, device=dev)).sum(dim=1)
    alpha = 1 + (n - 1) / s
    ok = (n >= SMALL_N_MIN_TAIL) & (s > 1e-12) & (alpha > 1)
    slope = torch.where(ok, 1 - alpha, torch.zeros_like(alpha))
    vals = torch.abs(offs / n[:, None] - (1 - torch.exp(slope[:, None] * (logs[None, :] - logs[:C, None]))))
    D = torch.where(inside, vals, torch.zeros_like(vals)).max(dim=1).values
    if bool(ok.any()):
        D = torch.where(ok, D, torch.ones_like(D))
        b = int(torch.argmin(D))
        return PowerLawFit(float(alpha[b]), float(x[b]), float(D[b]), int(N - b))
    # no candidate qualifies: the whole spectrum is the tail (WeightWatcher's fallback); degenerate → failed
    s0 = float(s[0])
    a0 = 1 + (N - 1) / s0 if s0 > 1e-12 else math.nan
    if not a0 > 1:
        return _FAILED
    d0 = torch.max(torch.abs(torch.arange(N, dtype=dt, device=dev) / N
                             - (1 - torch.exp((1 - a0) * (logs - logs[0])))))
    return PowerLawFit(a0, float(x[0]), float(d0), N)


# ---------------------------------------------------------------------------------------------- analyze


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def reliable_fit(alpha: float | None, n_tail: int) -> bool:
    """A fit worth reading: a finite α from at least MIN_TAIL tail eigenvalues."""
    return alpha is not None and math.isfinite(alpha) and n_tail >= MIN_TAIL


def warning_for(alpha: float, n_tail: int | None = None) -> str:
    """WeightWatcher's wording: "over-trained" if α < 2, "under-trained" if α > 6, "" in between; a fit on fewer
    than MIN_TAIL tail eigenvalues (when `n_tail` is given) is "n_tail < 50: unreliable" whatever its α."""
    if alpha is None or not math.isfinite(alpha):
        return "fit-failed"
    if n_tail is not None and n_tail < MIN_TAIL:
        return UNRELIABLE
    if alpha < OVER_TRAINED_BELOW:
        return "over-trained"
    if alpha > UNDER_TRAINED_ABOVE:
        return "under-trained"
    return ""


def spectrum_row(name: str, kind: str, shape, evals: torch.Tensor, xmin: str = "median") -> dict:
    """One analysis row: the fit plus λ_max, α·log10 λ_max, log10 Σλ^α, Σλ/λ_max (WeightWatcher's metrics)."""
    fit = fit_power_law(evals, xmin=xmin)
    lam_max = float(evals[-1]) if evals.numel() else math.nan
    total = float(evals.sum()) if evals.numel() else math.nan
    a = fit.alpha
    if math.isfinite(a) and evals.numel():
        alpha_weighted = a * math.log10(lam_max) if lam_max > 0 else math.nan
        s = float(torch.sum(evals.clamp_min(0) ** a))
        log_alpha_norm = math.log10(s) if s > 0 else math.nan
    else:
        alpha_weighted = log_alpha_norm = math.nan
    return {
        "name": name, "kind": kind, "shape": [int(s) for s in shape], "num_evals": int(evals.numel()),
        "alpha": _finite(a), "xmin": _finite(fit.xmin), "ks_distance": _finite(fit.ks_distance),
        "n_tail": int(fit.n_tail), "reliable": reliable_fit(a, int(fit.n_tail)), "lambda_max": _finite(lam_max),
        "alpha_weighted": _finite(alpha_weighted), "log_alpha_norm": _finite(log_alpha_norm),
        "stable_rank": _finite(total / lam_max) if lam_max and lam_max > 0 else None,
        "warning": warning_for(a, int(fit.n_tail)),
    }


def _state_layers(state: Mapping[str, torch.Tensor]):
    """(name, kind, weight) for every 4-D (conv) and 2-D (linear) `*.weight` tensor; 1-D (BatchNorm) skipped."""
    for key, t in state.items():
        if not key.endswith(".weight") and key != "weight":
            continue
        name = key[: -len(".weight")] if key != "weight" else ""
        if t.ndim == 4:
            yield name, "conv", t
        elif t.ndim == 2:
            yield name, "linear", t


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass the path of a .safetensors weights file")
    try:
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, header errors
        raise CheckpointError(f"cannot read {path} as safetensors ({e}); pass a .safetensors weights file") from None


def analyze(model_or_state, xmin: str = "median", min_evals: int = 0) -> list[dict]:
    """One row per Conv2d/Linear layer (see ROW_FIELDS): HT-SR power-law fit of its ESD plus norm metrics
    (TempBalance net_esd_estimator for xmin="median", WeightWatcher analyze() for xmin="ks").

    `model_or_state` is an nn.Module (layers in `named_modules()` order), a state dict, or the path of a
    safetensors state dict; for a state dict every 4-D `*.weight` is a conv and every 2-D `*.weight` a linear
    layer (1-D weights such as BatchNorm's are skipped), in the file's key order. Layers with fewer than
    `min_evals` eigenvalues are left out. Rows hold only str/int/float/None/list: JSON-serialisable as is
    (non-finite numbers become None)."""
    if xmin not in XMIN_MODES:
        raise ConfigError(f"unknown xmin {xmin!r}; choose one of: {', '.join(XMIN_MODES)}")
    if not isinstance(min_evals, int) or min_evals < 0:
        raise ConfigError(f"min_evals must be an integer ≥ 0, got {min_evals!r}")
    if isinstance(model_or_state, nn.Module):
        layers = _layers(model_or_state)
    elif isinstance(model_or_state, (str, os.PathLike)):
        layers = _state_layers(_load_state(Path(model_or_state)))
    elif isinstance(model_or_state, Mapping):
        layers = _state_layers(model_or_state)
    else:
        raise ConfigError(f"analyze() takes an nn.Module, a state dict or a .safetensors path, "
                          f"got {type(model_or_state).__name__}")
    rows = []
    for name, kind, w in layers:
        try:
            evals = weight_spectrum(w)
        except DataError as e:
            raise DataError(f"layer {name!r}: {e}") from None
        if evals.numel() < min_evals:
            continue
        rows.append(spectrum_row(name, kind, w.shape, evals, xmin=xmin))
    return rows


# ---------------------------------------------------------------------------------------------- output


def unreliable_note(rows: list[dict]) -> str:
    """One line naming the layers whose fit rests on fewer than MIN_TAIL tail eigenvalues, and why that matters
    ('' when there are none)."""
    bad = [r for r in rows if r.get("alpha") is not None and not r.get("reliable", True)]
    if not bad:
        return ""
    names = ", ".join(f"{r['name'] or '(root)'} ({r['n_tail']})" for r in bad[:6]) + (" …" if len(bad) > 6 else "")
    return (f"warning: {len(bad)} of {len(rows)} layers fit α on fewer than {MIN_TAIL} tail eigenvalues (n_tail): "
            f"{names}. Their α has a standard error of (α−1)/√n_tail and a small-sample bias, so it is marked "
            f"unreliable rather than read as over- or under-trained (Clauset et al. 2009: n ≳ {MIN_TAIL}).")


def to_csv(rows: list[dict], path) -> None:
    """Write rows as CSV (columns ROW_FIELDS, shape as "out×in×kh×kw", None as empty), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        r = dict(r)
        r["shape"] = "x".join(str(s) for s in r.get("shape", []))
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in ROW_FIELDS})
    atomic_write_text(path, buf.getvalue())


def to_json(rows: list[dict], path) -> None:
    """Write rows as a JSON list, atomically."""
    atomic_write_text(path, json.dumps(rows, indent=1) + "\n")


__all__ = ["MIN_TAIL", "PowerLawFit", "ROW_FIELDS", "UNRELIABLE", "analyze", "fit_power_law", "layer_spectra",
           "reliable_fit", "spectrum_row", "to_csv", "to_json", "unreliable_note", "warning_for", "weight_spectrum"]
