"""PNG figures of runs: learning curves, accuracy vs number of labels, per-layer series.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly (no pyplot, so no
global figure registry or backend switch) and written atomically (temp file + os.replace).
"""
from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import DataError
from ..atomic import atomic_target

Record = Mapping[str, Any]
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Render `fig` with Agg and write it to `path` as PNG atomically."""
    FigureCanvasAgg(fig)
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def series(records: Iterable[Record], key: str, x: str = "epoch") -> tuple[list[float], list[float]]:
    """(xs, ys) of the records that have both `x` and a finite numeric `key`, in record order."""
    xs, ys = [], []
    for r in records:
        xv, yv = r.get(x), r.get(key)
        if _is_finite(xv) and _is_finite(yv):
            xs.append(float(xv))
            ys.append(float(yv))
    return xs, ys


def plot_learning_curves(
    metrics_rows: Sequence[Record], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Write `learning_curves_figure(metrics_rows, title)` to `path` as PNG."""
    return save_png(learning_curves_figure(metrics_rows, title), path)


def learning_curves_figure(metrics_rows: Sequence[Record], title: str | None = None) -> Figure:
    """Loss and accuracy per head vs epoch (plus learning rate if logged) from metrics.jsonl records.

    Loss keys end in 'loss' (e.g. 'train/loss', 'eval/fr/loss'); accuracy keys end in '/acc'
    (e.g. 'eval/main/acc'), labelled by their prefix ('eval/main'); the 'lr' key gets its own panel.
    """
    keys = _numeric_keys(metrics_rows, exclude={"epoch"})
    loss_keys = [k for k in keys if k.rsplit("/", 1)[-1].endswith("loss")]
    acc_keys = [k for k in keys if k == "acc" or k.endswith("/acc")]
    lr_keys = [k for k in keys if k == "lr" or k.endswith("/lr")]
    if not loss_keys and not acc_keys:
        raise DataError(
            "metrics records have no loss or accuracy keys (e.g. 'train/loss', 'eval/main/acc'); "
            "check that the run logged its metrics"
        )
    panels = [(ks, name) for ks, name in ((loss_keys, "loss"), (acc_keys, "accuracy"), (lr_keys, "learning rate")) if ks]
    fig = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ks, name) in zip(axes, panels):
        for k in ks:
            xs, ys = series(metrics_rows, k)
            label = k if name == "loss" else (k.rsplit("/", 1)[0] if "/" in k else k)
            ax.plot(xs, ys, marker="." if len(xs) <= 50 else None, label=label)
        _style(ax, "epoch", name)
    if title:
        fig.suptitle(title)
    return fig


def plot_accuracy_vs_labels(
    summary_rows: Sequence[Record], path: str | os.PathLike[str], title: str = "", **options: Any
) -> Path:
    """Write `accuracy_vs_labels_figure(summary_rows, title, **options)` to `path` as PNG."""
    return save_png(accuracy_vs_labels_figure(summary_rows, title, **options), path)


def accuracy_vs_labels_figure(
    summary_rows: Sequence[Record],
    title: str = "",
    *,
    x: str = "labels",
    method_key: str = "method",
    mean: str = "mean",
    std: str = "std",
    ylabel: str = "test accuracy (%)",
    logx: bool = False,
) -> Figure:
    """Paper-style figure: x = number of labels, one line per method with markers and a shaded ±std band.

    `summary_rows` are `tables.summarize(rows, by=("labels", "method"))` rows (keys configurable).
    """
    methods: dict[Any, list[tuple[float, float, float]]] = {}
    for i, r in enumerate(summary_rows):
        for k in (x, method_key, mean):
            if k not in r:
                raise DataError(f"summary row {i} has no {k!r}; summarize with by=({x!r}, {method_key!r})")
        s = r.get(std)
        methods.setdefault(r[method_key], []).append(
            (float(r[x]), float(r[mean]), float(s) if _is_finite(s) else 0.0)
        )
    if not methods:
        raise DataError("no summary rows to plot; summarize some finished runs first")
    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for j, (method, pts) in enumerate(methods.items()):
        pts.sort()
        xs, ms, ss = zip(*pts)
        (line,) = ax.plot(xs, ms, marker=MARKERS[j % len(MARKERS)], markersize=5, linewidth=1.5, label=str(method))
        ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    if logx:
        ax.set_xscale("log")
    _style(ax, "number of labels", ylabel)
    if title:
        ax.set_title(title)
    return fig


def plot_series(
    records: Sequence[Record], keys: Sequence[str], path: str | os.PathLike[str], **options: Any
) -> Path:
    """Write `series_figure(records, keys, **options)` to `path` as PNG."""
    return save_png(series_figure(records, keys, **options), path)


def series_figure(
    records: Sequence[Record],
    keys: Sequence[str],
    *,
    x: str = "epoch",
    title: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """Plot each key (exact, or a glob like 'alpha/*') over `x` on one axis, e.g. per-layer series."""
    available = _numeric_keys(records, exclude={x})
    chosen: dict[str, None] = {}
    for pattern in keys:
        for k in available:
            if k == pattern or fnmatch.fnmatchcase(k, pattern):
                chosen.setdefault(k, None)
    if not chosen:
        raise DataError(
            f"no numeric series match {list(keys)}; available keys include: {', '.join(available[:10]) or 'none'}"
        )
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    n = len(chosen)
    for j, k in enumerate(chosen):
        xs, ys = series(records, k, x)
        color = _viridis(j, n) if n > 10 else None
        ax.plot(xs, ys, color=color, linewidth=1.2, label=k)
    _style(ax, x, ylabel or _common_prefix(list(chosen)), legend_cols=2 if n > 10 else 1)
    if title:
        ax.set_title(title)
    return fig


# -- helpers ------------------------------------------------------------------------------


def _is_finite(v: Any) -> bool:
    """True for a real, finite number (bools excluded)."""
    if isinstance(v, bool) or v is None:
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _numeric_keys(records: Iterable[Record], exclude: set[str]) -> list[str]:
    """Keys holding a finite number in at least one record, first-seen order."""
    seen: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k not in exclude and k not in seen and _is_finite(v):
                seen[k] = None
    return list(seen)


def _style(ax: Axes, xlabel: str, ylabel: str, legend_cols: int = 1) -> None:
    """Axis labels, light grid, legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", ncol=legend_cols, frameon=False)


def _viridis(j: int, n: int) -> tuple[float, float, float, float]:
    """Colour j of n evenly spaced along viridis."""
    return colormaps["viridis"](j / max(n - 1, 1))


def _common_prefix(keys: list[str]) -> str:
    """Shared '/'-separated prefix of the keys (e.g. 'alpha'), or '' if none."""
    parts = [k.split("/") for k in keys]
    prefix = []
    for segs in zip(*parts):
        if len(set(segs)) != 1:
            break
        prefix.append(segs[0])
    if len(prefix) == min(len(p) for p in parts):  # a single key: drop its last segment
        prefix = prefix[:-1]
    return "/".join(prefix)
