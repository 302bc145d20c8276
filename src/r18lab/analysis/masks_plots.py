"""Per-layer profile of pruning masks (spec 002a §5): density, Ramanujan gap Δr and weighted spectral gap λ of
every prunable layer in depth order, one line per mask, from the rows of `r18lab analyze masks`
(`masks.mask_topology`). A collapsed layer (gaps undefined) is a gap in its line and a cross on the density panel.
Drawn without pyplot's global state; the PNG is written atomically (`results.plots.save_png`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import DataError
from ..results.plots import save_png

PANELS = (("density", "density (kept fraction, log)"), ("delta_r", r"Ramanujan gap $\Delta_r$"),
          ("weighted_gap", r"weighted spectral gap $\lambda$"))


def _values(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) is not None and math.isfinite(float(r[key])) else np.nan
                     for r in rows], dtype=float)


def plot_layer_profile(rows_by_label: dict[str, list[dict]], path, title: str = "") -> Path:
    """Three stacked panels (density on a log axis, Δr, λ) against layer index, one line per label; x tick
    labels are the layer names of the longest row list."""
    if not rows_by_label or not any(rows_by_label.values()):
        raise DataError("plot_layer_profile needs at least one labelled, non-empty list of layer rows")
    fig = Figure(figsize=(10, 8))
    axes = [fig.add_subplot(3, 1, 1)]
    axes += [fig.add_subplot(3, 1, i + 1, sharex=axes[0]) for i in (1, 2)]  # one x axis: layers line up
    longest: list[dict] = max(rows_by_label.values(), key=len)
    for label, rows in rows_by_label.items():
        x = np.arange(len(rows))
        for ax, (key, _) in zip(axes, PANELS):
            y = _values(rows, key)
            if key == "density":
                y = np.where(y > 0, y, np.nan)  # an empty layer has no place on a log axis
            line, = ax.plot(x, y, marker="o", markersize=3, linewidth=1.2, label=str(label))
            if key == "density":
                collapsed = np.array([bool(r.get("collapsed")) for r in rows])
                if collapsed.any():
                    ax.plot(x[collapsed], np.where(np.isfinite(y[collapsed]), y[collapsed], np.nanmin(y)
                                                   if np.isfinite(y).any() else 1.0),
                            "x", color=line.get_color(), markersize=8)
    for ax, (key, ylabel) in zip(axes, PANELS):
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(True, alpha=0.3)
        if key == "density":
            ax.set_yscale("log")
        else:
            ax.axhline(0, color="grey", linewidth=0.8)
        ax.tick_params(axis="x", labelbottom=ax is axes[-1])
    axes[-1].set_xticks(np.arange(len(longest)))
    if len(longest) <= 80:
        axes[-1].set_xticklabels([r.get("name", "") for r in longest], rotation=90, fontsize=6)
    axes[-1].set_xlim(-0.5, len(longest) - 0.5)  # fixed: a panel with undefined ends would autoscale otherwise
    axes[0].legend(fontsize=8)
    axes[0].set_title(title or "mask topology by layer (× = collapsed layer: mean degree < 3)")
    axes[-1].set_xlabel("layer (depth order)")
    return save_png(fig, path)


__all__ = ["plot_layer_profile"]
