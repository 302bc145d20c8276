"""Correlation-vs-strength scatter (paper 004 Figs. 4/6): one point per configuration, from the rows of
`r18lab analyze ensemble` (`ensemble_command.ensemble_summary` plus a `label`).

Rows sharing a label (e.g. seeds of one configuration) are one point at their mean, with ±1 sd bars and the
single rows as faint dots. Left panel: votes (Breiman's hard margins); right: the soft variant. Dotted curves
are iso-bound lines ρ̄ = B·s²/(1 − s²) (Breiman 2001, Thm 2.3). Drawn without pyplot's global state.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import DataError
from ..results.plots import save_png


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def strength_correlation_points(rows: Sequence[dict], soft: bool = False) -> list[dict]:
    """Per label (first-seen order): mean and sd of strength and correlation over its rows with a finite
    correlation, and the rows' own (strength, correlation) pairs."""
    s_key, c_key = ("soft_strength", "soft_correlation") if soft else ("strength", "correlation")
    points = []
    for label in dict.fromkeys(str(r["label"]) for r in rows):
        pairs = [(float(r[s_key]), float(r[c_key])) for r in rows
                 if str(r["label"]) == label and _finite(r.get(s_key)) and _finite(r.get(c_key))]
        if not pairs:
            continue
        arr = np.array(pairs)
        sd = arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros(2)
        points.append({"label": label, "n": len(arr), "strength": float(arr[:, 0].mean()),
                       "correlation": float(arr[:, 1].mean()), "strength_sd": float(sd[0]),
                       "correlation_sd": float(sd[1]), "rows": arr})
    return points


def plot_strength_correlation(rows: Sequence[dict], path, title: str | None = None) -> Path:
    """Two panels (votes, soft) of correlation ρ̄ against strength s, one point per label; returns the path."""
    if not rows:
        raise DataError("plot_strength_correlation needs at least one row")
    fig = Figure(figsize=(11, 4.6))
    for i, soft in enumerate((False, True)):
        ax = fig.add_subplot(1, 2, i + 1)
        points = strength_correlation_points(rows, soft)
        for j, p in enumerate(points):
            colour = f"C{j % 10}"
            if p["n"] > 1:
                ax.scatter(p["rows"][:, 0], p["rows"][:, 1], s=12, c=colour, alpha=0.35, linewidths=0)
            ax.errorbar(p["strength"], p["correlation"], xerr=p["strength_sd"] or None,
                        yerr=p["correlation_sd"] or None, fmt="o", ms=7, color=colour, capsize=3,
                        label=f"{p['label']} (n={p['n']})")
            ax.annotate(p["label"], (p["strength"], p["correlation"]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        if points:
            _iso_bounds(ax, points)
            ax.legend(fontsize=8, frameon=False, loc="best")
        else:
            ax.text(0.5, 0.5, "no finite correlation\n(every member constant or a single member)",
                    ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_xlabel("strength s (mean margin)")
        ax.set_ylabel("mean correlation ρ̄ of raw margins")
        ax.set_title("soft (probabilities)" if soft else "votes (argmax)", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "strength vs correlation of the ensemble members", fontsize=11)
    fig.subplots_adjust(top=0.86, wspace=0.25)
    return save_png(fig, path)


def _iso_bounds(ax, points: list[dict]) -> None:
    """Dotted ρ̄ = B·s²/(1 − s²) through the plotted range for a few bound values B, axis limits unchanged."""
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    s = np.linspace(max(xlim[0], 1e-3), min(xlim[1], 0.999), 200)
    if len(s) < 2 or s[0] >= s[-1]:
        return
    ratio = s ** 2 / (1 - s ** 2)
    bounds = [p["correlation"] / (p["strength"] ** 2 / (1 - p["strength"] ** 2))
              for p in points if 0 < p["strength"] < 1]
    for b in sorted(set(round(v, 3) for v in bounds))[:6]:
        ax.plot(s, b * ratio, ":", color="grey", lw=0.8)
        ax.annotate(f"bound {b:g}", (s[-1], b * ratio[-1]), fontsize=7, color="grey", ha="right",
                    va="bottom", annotation_clip=True)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)


__all__ = ["plot_strength_correlation", "strength_correlation_points"]
