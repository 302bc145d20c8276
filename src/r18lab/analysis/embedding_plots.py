"""Fig. 2-style embedding panel (paper 003): one t-SNE scatter per model, side by side, coloured by class.

Drawn on matplotlib's Agg canvas without pyplot's global state; the PNG is written atomically (`save_png`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import DataError
from ..results.plots import save_png


def _number(v) -> str:
    return "n/a" if v is None else ("inf" if math.isinf(v) else f"{v:.3f}")


def plot_embedding_panel(rows: Sequence[dict], labels, path, class_names: Sequence[str] | None = None,
                         title: str | None = None) -> Path:
    """1 × N scatter panels of `embedding_rows` rows (same images, same `labels` in each), one colour per class
    shared by all panels, silhouette and scatter ratio under each panel, one legend (class names when known)."""
    if not rows:
        raise DataError("plot_embedding_panel needs at least one row")
    y = np.asarray(labels)
    classes = [int(c) for c in np.unique(y)]
    n = len(rows)
    fig = Figure(figsize=(3.6 * n, 4.2))
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    colours = {c: f"C{i % 10}" for i, c in enumerate(classes)}
    names = {c: (str(class_names[c]) if class_names is not None and c < len(class_names) else f"class {c}")
             for c in classes}
    size = float(np.clip(600.0 / max(len(y), 1) ** 0.5, 2.0, 30.0))
    handles = {}
    for ax, row in zip(axes, rows):
        pts = np.asarray(row["points"], dtype=float)
        if pts.shape != (len(y), 2):
            raise DataError(f"row {row.get('label')!r} has points of shape {pts.shape}; expected ({len(y)}, 2)")
        for c in classes:
            m = y == c
            handles[c] = ax.scatter(pts[m, 0], pts[m, 1], s=size, c=colours[c], alpha=0.7, linewidths=0,
                                    label=names[c])
        ax.set_title(str(row.get("label", "")), fontsize=10)
        ax.set_xlabel(f"silhouette {_number(row.get('silhouette'))}\nscatter ratio {_number(row.get('scatter_ratio'))}",
                      fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend([handles[c] for c in classes], [names[c] for c in classes], loc="lower center",
               ncol=min(len(classes), 10), fontsize=9, markerscale=max(1.0, 40.0 / size) ** 0.5, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title or "t-SNE of penultimate features (numbers: original feature space)", fontsize=11)
    fig.subplots_adjust(bottom=0.2, top=0.85, wspace=0.08)
    return save_png(fig, path)


__all__ = ["plot_embedding_panel"]
