"""Plots of layer spectra: α along depth per run, and one layer's log–log ESD with its power-law tail fit.

Figures are drawn on matplotlib's Agg canvas without touching pyplot's global state, and each PNG is written
to a temporary file beside the target and renamed over it, so a reader never sees a half-written image.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import DataError
from ..results.plots import save_png
from .spectrum import MIN_TAIL, OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE, PowerLawFit


def plot_alpha_by_depth(rows_by_label: dict[str, list[dict]], path) -> Path:
    """α of each layer along depth (row order), one line per label, guide lines at α = 2 and α = 6 (HT-SR's
    well-trained range, WeightWatcher's warnings). Rows are `analyze()` rows; layers without α are gaps."""
    if not rows_by_label:
        raise DataError("plot_alpha_by_depth needs at least one labelled list of rows")
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    longest: list[dict] = []
    for label, rows in rows_by_label.items():
        alphas = [r.get("alpha") for r in rows]
        y = np.array([a if a is not None and math.isfinite(a) else np.nan for a in alphas], dtype=float)
        (line,) = ax.plot(np.arange(len(y)), y, marker="o", markersize=3, linewidth=1.2, label=str(label))
        weak = [i for i, r in enumerate(rows) if r.get("reliable") is False and np.isfinite(y[i])]
        if weak:  # fits on fewer than MIN_TAIL tail eigenvalues: open markers, not to be read as over/under-trained
            ax.plot(weak, y[weak], linestyle="none", marker="o", markersize=6, markerfacecolor="white",
                    markeredgecolor=line.get_color(), label=f"{label}: n_tail < {MIN_TAIL} (unreliable)")
        if len(rows) > len(longest):
            longest = rows
    ax.axhline(OVER_TRAINED_BELOW, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(UNDER_TRAINED_ABOVE, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("layer (depth order)")
    ax.set_ylabel(r"power-law exponent $\alpha$")
    ax.set_title(r"ESD tail exponent by layer (guides: $\alpha$ = 2, 6)")
    if 0 < len(longest) <= 64:
        ax.set_xticks(np.arange(len(longest)))
        ax.set_xticklabels([r.get("name", "") for r in longest], rotation=90, fontsize=6)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_esd(eigenvalues, fit: PowerLawFit, path, title: str = "") -> Path:
    """Log–log histogram (density) of the ESD, the fitted Pareto tail p(λ) = (n/N)(α−1)/λ_min·(λ/λ_min)^(−α)
    for λ ≥ λ_min, and a vertical line at λ_min."""
    ev = eigenvalues.detach().cpu().double().numpy() if isinstance(eigenvalues, torch.Tensor) \
        else np.asarray(eigenvalues, dtype=float)
    ev = ev[np.isfinite(ev) & (ev > 0)]
    if ev.size == 0:
        raise DataError("plot_esd needs at least one positive eigenvalue")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = ev.min(), ev.max()
    if hi <= lo:
        lo, hi = lo / 1.1, hi * 1.1
    bins = np.logspace(np.log10(lo), np.log10(hi), min(100, max(10, ev.size // 5)) + 1)
    ax.hist(ev, bins=bins, density=True, color="tab:blue", alpha=0.6, label=f"ESD ({ev.size} eigenvalues)")
    a, xm = fit.alpha, fit.xmin
    if a is not None and xm is not None and math.isfinite(a) and math.isfinite(xm) and xm > 0 and a > 1:
        xs = np.logspace(np.log10(xm), np.log10(hi), 200)
        frac = fit.n_tail / ev.size if ev.size else 1.0
        ax.plot(xs, frac * (a - 1) / xm * (xs / xm) ** (-a), color="tab:red", linewidth=1.5,
                label=rf"power law $\alpha$={a:.2f} (D={fit.ks_distance:.3f}, n={fit.n_tail}"
                      + (f" < {MIN_TAIL}: unreliable)" if fit.n_tail < MIN_TAIL else ")"))
        ax.axvline(xm, color="tab:red", linestyle="--", linewidth=1, label=rf"$\lambda_{{min}}$={xm:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"eigenvalue $\lambda$ of $W^\top W$")
    ax.set_ylabel("density")
    ax.set_title(title or "empirical spectral density")
    ax.legend(fontsize=8)
    return save_png(fig, path)


__all__ = ["plot_alpha_by_depth", "plot_esd"]
