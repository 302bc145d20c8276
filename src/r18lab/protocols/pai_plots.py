"""Figures of the pai sweep: accuracy vs density per generator and pretraining mode (log-x), and the mask
topology at pruning time against final accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from ..results.plots import MARKERS, save_png
from .pai import DENSE


def plot_accuracy_vs_density(summary: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One line per (generator, N): mean ± std accuracy over seeds vs density; the dense run as a line."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(s["method"] for s in summary if s["method"] != DENSE))
    modes = sorted({s["pretrain_steps"] for s in summary if s["method"] != DENSE})
    for i, m in enumerate(methods):
        for j, n in enumerate(modes):
            pts = sorted((s["density"], s["mean"], s["std"]) for s in summary
                         if s["method"] == m and s["pretrain_steps"] == n)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], capsize=3,
                            marker=MARKERS[i % len(MARKERS)], linestyle="-" if j == 0 else "--",
                            color=f"C{i}", label=f"{m}, N={n}")
    for s in summary:
        if s["method"] == DENSE:
            ax.axhline(s["mean"], color="k", linewidth=1, label=f"dense {s['mean']:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("density (kept fraction)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_topology_vs_accuracy(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Full-spectrum distance D (origin reference) of each mask vs its run's accuracy, colour = generator."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, m in enumerate(methods):
        pts = [(r["distance"], r["acc"]) for r in rows if r["method"] == m and "distance" in r]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[i % len(MARKERS)], color=f"C{i}",
                   label=m, s=18)
    ax.set_xlabel("full-spectrum distance D at pruning time")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_population(populations: Sequence[tuple[str, Sequence[float]]], path: Path, title: str = "") -> Path:
    """The population search: each run's candidate distances D as a histogram, its chosen (largest) D marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for i, (label, distances) in enumerate(populations):
        ax.hist(distances, bins=min(20, max(len(distances), 1)), alpha=0.45, color=f"C{i}", label=label)
        ax.axvline(max(distances), color=f"C{i}", linestyle="--", linewidth=1)
    ax.set_xlabel("full-spectrum distance D of a candidate mask (dashed: the one kept)")
    ax.set_ylabel("masks")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_png(fig, path)
