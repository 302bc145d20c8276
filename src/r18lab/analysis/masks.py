"""Topology of pruning masks (spec 002a §1.5–1.7): every pruned Conv2d/Linear weight read as a bipartite graph,
its Ramanujan gaps, weighted spectral gap, IMDB and NaRC, and the network's full-spectrum distance.

Route. A layer's biadjacency B (C_out × C_in·k_h·k_w, 1 where the mask keeps a weight) defines the adjacency
A = [[0, Bᵀ], [B, 0]] of the bipartite graph. If B v = σ u and Bᵀ u = σ v then A·[v; ±u] = ±σ·[v; ±u], so the
eigenvalues of A are exactly ±σ_i(B) plus |n_L − n_R| zeros. We therefore take B's singular values in float64
instead of solving the (n_L + n_R)² eigenproblem: `torch.linalg.svdvals` for layers up to GRAM_ABOVE weights, above
that the square roots of the eigenvalues of the smaller Gram matrix B Bᵀ or Bᵀ B (the same σ, several times
faster than svdvals on ResNet-18's 512 × 4608 conv). Sorted by magnitude A's spectrum is σ1, σ1, σ2, σ2, …: the
largest non-trivial |eigenvalue| μ̂ is σ2, i.e. A's THIRD largest |eigenvalue| (predecessor
`get_eig_values(k=3)`, `abs_eig[-1]`). Taking the second (a public PAGS re-implementation's `sorted_abs[1]`) gives
μ̂ = σ1 and makes λ ≡ 0 (spec §1.6).

Nodes of degree zero are removed before degrees are averaged (predecessor `filter_zero_degree`); zero rows and
columns do not change the non-zero singular values, so only the degrees and node counts see the filter. Left
nodes are the inputs (columns of B), right nodes the outputs (rows), as in the predecessor's graphs.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ConfigError

NAN = float("nan")
DEFAULT_COORDS = ("delta_r", "weighted_gap")
GRAM_ABOVE = 1 << 16  # entries of B above which σ comes from the Gram matrix (see `top_singular_values`)
SPECTRAL_KEYS = ("delta_s", "delta_r", "delta_mean", "delta_s_norm", "delta_r_norm", "weighted_gap",
                 "imdb_s", "imdb_r", "weighted_imdb", "narc")


# -- graphs ------------------------------------------------------------------------------------------------
def biadjacency(mask: torch.Tensor, weight: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, B_w): B = M as C_out × (C_in·k_h·k_w) in {0,1} (float64), B_w = |W ⊙ M| the same way (spec §1.5)."""
    if mask.dim() < 2:
        raise ConfigError(f"a mask must be a Linear (2-d) or Conv (4-d) weight's, got shape {tuple(mask.shape)}; "
                          "biases and BatchNorm are never pruned")
    if weight is not None and weight.shape != mask.shape:
        raise ConfigError(f"weight shape {tuple(weight.shape)} differs from its mask's {tuple(mask.shape)}; "
                          "pair each mask with the weight of the same parameter")
    # The predecessor draws an edge only where |W ⊙ M| > 0; the spec's B = M keeps a masked-in zero weight.
    b = (mask.detach().reshape(mask.shape[0], -1) != 0).to(torch.float64)
    if weight is None:
        return b, None
    return b, (weight.detach().reshape(mask.shape[0], -1).to(torch.float64) * b).abs()


def top_singular_values(b: torch.Tensor, k: int = 2, gram_above: int = GRAM_ABOVE) -> list[float]:
    """The k largest singular values of b in float64, padded with 0: `svdvals` up to `gram_above` entries, above
    it √eigvalsh of the smaller Gram matrix (b bᵀ or bᵀ b; ~20× faster on 512 × 4608, error on σ ≈ eps·σ1²/σ)."""
    if b.numel() == 0:
        return [0.0] * k
    b = b.to(torch.float64)
    if b.numel() <= gram_above:
        s = torch.linalg.svdvals(b)
    else:
        gram = b @ b.T if b.shape[0] <= b.shape[1] else b.T @ b
        s = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()
    return (s[:k].tolist() + [0.0] * k)[:k]


# -- one-line formulas -------------------------------------------------------------------------------------
def delta_s(mu0: float, mu_hat: float) -> float:
    """Δs = 2√(μ0 − 1) − μ̂, the degree estimated by μ0 (ICLR'23 predecessor `scores.py::delta_s`)."""
    return 2 * math.sqrt(mu0 - 1) - mu_hat if mu0 >= 1 else NAN


def delta_r(d_left: float, d_right: float, mu_hat: float) -> float:
    """Δr = √(d̄_L − 1) + √(d̄_R − 1) − μ̂, biregular Ramanujan bound with mean degrees (predecessor `delta_r`)."""
    return math.sqrt(d_left - 1) + math.sqrt(d_right - 1) - mu_hat


def delta_mean(d_all: float, mu_hat: float) -> float:
    """2√(d̄ − 1) − μ̂, d̄ = mean degree over all nodes (third-party PAGS `compute_ramanujan_gap`, μ̂ = σ2)."""
    return 2 * math.sqrt(d_all - 1) - mu_hat


def narc(mu_hat: float, edges: int, dim_in: int, dim_out: int, d_left: float, n_left: int, n_right: int) -> float:
    """NaRC = ((μ̂²/4 + 1)√(n_L n_R) − |E − (d̄_L/C_out) n_L n_R|)/(dim_in·dim_out); ≤ 0 ⇒ random-like
    (ICLR'23 predecessor `random_bound`)."""
    ls = (mu_hat ** 2 / 4 + 1) * math.sqrt(n_left * n_right)
    return (ls - abs(edges - d_left / dim_out * n_left * n_right)) / (dim_in * dim_out)


# -- one layer ---------------------------------------------------------------------------------------------
def _non_isolated(b: torch.Tensor, bw: torch.Tensor | None):
    """B (and B_w) without zero rows and columns of B (predecessor `filter_zero_degree`)."""
    rows, cols = b.sum(1) > 0, b.sum(0) > 0
    b = b[rows][:, cols]
    return b, (bw[rows][:, cols] if bw is not None else None)


def _graph(b: torch.Tensor, bw: torch.Tensor | None, min_degree: float) -> dict:
    """Degrees, σ1, σ2 and gaps of a zero-degree-free biadjacency; gaps NaN when a mean degree < min_degree."""
    n_right, n_left = b.shape
    edges = int(b.sum())
    dl = edges / n_left if n_left else NAN
    dr = edges / n_right if n_right else NAN
    d_all = 2 * edges / (n_left + n_right) if n_left + n_right else NAN  # third-party PAGS keeps isolated nodes
    s1, s2 = top_singular_values(b)
    out = {"edges": edges, "n_left": n_left, "n_right": n_right, "mean_degree_left": dl, "mean_degree_right": dr,
           "mean_degree": d_all, "sigma1": s1, "sigma2": s2, "omega1": NAN, "omega2": NAN,
           "collapsed": not (dl >= min_degree and dr >= min_degree)}  # NaN (no edges) is collapsed too
    if bw is not None:
        out["omega1"], out["omega2"] = top_singular_values(bw)
    if out["collapsed"]:
        out.update(delta_s=NAN, delta_r=NAN, delta_mean=NAN, weighted_gap=NAN)
        return out
    ub_s, ub_r = 2 * math.sqrt(s1 - 1), math.sqrt(dl - 1) + math.sqrt(dr - 1)
    out.update(delta_s=delta_s(s1, s2), delta_r=delta_r(dl, dr, s2), delta_mean=delta_mean(d_all, s2),
               delta_s_norm=delta_s(s1, s2) / ub_s if ub_s > 0 else NAN,
               delta_r_norm=delta_r(dl, dr, s2) / ub_r if ub_r > 0 else NAN,
               weighted_gap=out["omega1"] - out["omega2"])
    return out


def imdb(b: torch.Tensor, bw: torch.Tensor | None = None, min_degree: float = 3, min_class: int = 3) -> dict:
    """Iterative mean difference of bound (ICLR'23 `iterative_mean_spectral_gap` over `find_d_left_regular`):
    for every left degree δ > 0 held by ≥ min_class input nodes, the sub-graph of those inputs and all outputs
    (zero-degree outputs dropped) is d-left-regular; IMDB = mean Δs and Δr over such sub-graphs that are not
    collapsed; the weighted IMDB is λ = ω1 − ω2 averaged over the same sub-graphs (spec §1.6; unconfirmed)."""
    deg = b.sum(0)
    gaps: list[dict] = []
    for value, count in zip(*torch.unique(deg, return_counts=True)):
        if value <= 0 or count < min_class:
            continue
        cols = deg == value
        sub, sub_w = _non_isolated(b[:, cols], bw[:, cols] if bw is not None else None)
        g = _graph(sub, sub_w, min_degree)
        if not g["collapsed"]:
            gaps.append(g)
    if not gaps:
        return {"imdb_s": NAN, "imdb_r": NAN, "weighted_imdb": NAN, "imdb_count": 0}
    def mean(key: str) -> float:
        return sum(g[key] for g in gaps) / len(gaps)

    return {"imdb_s": mean("delta_s"), "imdb_r": mean("delta_r"),
            "weighted_imdb": mean("weighted_gap") if bw is not None else NAN, "imdb_count": len(gaps)}


def layer_topology(mask: torch.Tensor, weight: torch.Tensor | None = None, min_degree: float = 3,
                   min_class: int = 3) -> dict:
    """One layer's row (spec §1.6): size, density, non-isolated node counts, mean degrees, σ1, σ2 of B, Δs, Δr,
    2√(d̄−1) − μ̂, normalised gaps, weighted gap λ = ω1 − ω2 of |W⊙M| (NaN without a weight), IMDB, weighted IMDB,
    NaRC; a layer with d̄_L or d̄_R < min_degree is `collapsed` (its gaps NaN, σ1/σ2 still given) with a `reason`."""
    b, bw = biadjacency(mask, weight)
    dim_out, dim_in = b.shape
    kept = int(b.sum())
    g = _graph(*_non_isolated(b, bw), min_degree)
    row = {"n_weights": b.numel(), "kept": kept, "density": kept / b.numel() if b.numel() else NAN,
           "n_left": g["n_left"], "n_right": g["n_right"], "mean_degree_left": g["mean_degree_left"],
           "mean_degree_right": g["mean_degree_right"], "sigma1": g["sigma1"], "sigma2": g["sigma2"],
           "omega1": g["omega1"], "omega2": g["omega2"], **{k: NAN for k in SPECTRAL_KEYS},
           "imdb_count": 0, "expansion": g["n_right"] / g["n_left"] if g["n_left"] else NAN,
           "collapsed": g["collapsed"], "reason": ""}
    if g["collapsed"]:
        row["reason"] = ("no kept weights" if kept == 0 else
                         f"layer collapse: mean degrees d̄_L={g['mean_degree_left']:.2f}, "
                         f"d̄_R={g['mean_degree_right']:.2f}, need both ≥ {min_degree:g}")
        return row
    row.update({k: g[k] for k in ("delta_s", "delta_r", "delta_mean", "delta_s_norm", "delta_r_norm")})
    if bw is not None:
        row["weighted_gap"] = g["weighted_gap"]
    row.update(imdb(b, bw, min_degree, min_class))
    row["narc"] = narc(g["sigma2"], kept, dim_in, dim_out, g["mean_degree_left"], g["n_left"], g["n_right"])
    return row


def mask_topology(masks: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None = None,
                  min_degree: float = 3) -> list[dict]:
    """`layer_topology` of every mask (name order kept), with `name` and `shape`; weights by the same names
    (absent ⇒ the weighted metrics are NaN)."""
    weights = weights or {}
    return [{"name": n, "shape": list(m.shape), **layer_topology(m, weights.get(n), min_degree)}
            for n, m in masks.items()]


# -- the network -------------------------------------------------------------------------------------------
def _by_name(layers) -> dict[str, dict]:
    return layers if isinstance(layers, dict) else {r["name"]: r for r in layers}


def valid_reason(row: dict, coords: Sequence[str] = DEFAULT_COORDS, min_kept: int = 1000,
                 min_density: float = 1e-3) -> str:
    """Why a layer is left out of D ("" if it is in): kept > min_kept and density > min_density (third-party PAGS
    `isvalid`: `m.sum() > 1000 and m.sum()/m.numel() > 1e-3`; spec §1.7 writes "≥ 1000", §6.7 "> 1000") and every
    coordinate finite (that code skips NaN distances; ours are NaN for a collapsed layer)."""
    if not row["kept"] > min_kept:
        return f"kept {row['kept']} ≤ {min_kept}"
    if not row["density"] > min_density:
        return f"density {row['density']:.2g} ≤ {min_density:g}"
    bad = [c for c in coords if not math.isfinite(row.get(c, NAN))]
    if not bad:
        return ""
    return f"{', '.join(bad)} undefined" + (f" ({row['reason']})" if row.get("reason") else "")


def network_coordinate(layers, coords: Sequence[str] = DEFAULT_COORDS, min_kept: int = 1000,
                       min_density: float = 1e-3) -> dict:
    """Full-spectrum coordinate (spec §1.7): `names` of the valid layers, `coordinates` (valid layers × coords,
    float64), `coords`, and `excluded` = {name: reason}. `layers`: name → `layer_topology` row (or a row list)."""
    names, values, excluded = [], [], {}
    for name, row in _by_name(layers).items():
        why = valid_reason(row, coords, min_kept, min_density)
        if why:
            excluded[name] = why
            continue
        names.append(name)
        values.append([float(row[c]) for c in coords])
    return {"names": names, "coordinates": torch.tensor(values, dtype=torch.float64).reshape(len(names), len(coords)),
            "coords": list(coords), "excluded": excluded}


def distance_terms(layers, reference_layers=None, coords: Sequence[str] = DEFAULT_COORDS, min_kept: int = 1000,
                   min_density: float = 1e-3) -> dict[str, float]:
    """‖c_l − c_l(ref)‖₂ per valid layer (reference None = the origin, as the third-party PAGS); a layer whose
    reference coordinate is undefined is left out. Validity is judged on `layers` only."""
    net = network_coordinate(layers, coords, min_kept, min_density)
    ref = _by_name(reference_layers) if reference_layers is not None else None
    terms = {}
    for name, c in zip(net["names"], net["coordinates"]):
        if ref is None:
            terms[name] = float(torch.linalg.vector_norm(c))
            continue
        if name not in ref:
            raise ConfigError(f"the reference has no layer {name!r}; compare masks of the same model")
        r = torch.tensor([float(ref[name].get(k, NAN)) for k in coords], dtype=torch.float64)
        if bool(torch.isfinite(r).all()):
            terms[name] = float(torch.linalg.vector_norm(c - r))
    return terms


def spectral_distance(layers, reference_layers=None, coords: Sequence[str] = DEFAULT_COORDS, min_kept: int = 1000,
                      min_density: float = 1e-3) -> float:
    """D = Σ_l ‖c_l − c_l(ref)‖₂ over valid layers, c_l = (Δr, λ) by default (spec §1.7; ref None = origin)."""
    return sum(distance_terms(layers, reference_layers, coords, min_kept, min_density).values())


__all__ = ["biadjacency", "delta_mean", "delta_r", "delta_s", "distance_terms", "imdb", "layer_topology",
           "mask_topology", "narc", "network_coordinate", "spectral_distance", "top_singular_values",
           "valid_reason"]
