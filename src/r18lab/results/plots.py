"""PNG figures of runs: learning curves, accuracy vs number of labels (or by method at one budget), accuracy by
group, per-layer series, confusion matrices. Wherever rows carry a std over seeds it is drawn as error bars;
epoch axes have integer ticks.

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
from matplotlib.ticker import MaxNLocator
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
    acc_keys = [k for k in keys if k == "acc" or k.endswith("/acc") or k.endswith("/balanced_acc")]
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
            balanced = k.endswith("/balanced_acc")
            ax.plot(xs, ys, marker="." if len(xs) <= 50 else None, label=label + " (balanced)" if balanced else label,
                    linestyle="--" if balanced else "-")
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
    """Paper-style figure: x = number of labels, one line per method with markers and ±std error bars (std over
    seeds; none where a single run gives no std).

    `summary_rows` are `tables.summarize(rows, by=("labels", "method"))` rows (keys configurable). A single label
    budget is drawn as categories — one point with error bars per method, the budget in the axis label — and
    budgets that are not all numbers (e.g. `all`) as evenly spaced categories, never on a stretched numeric axis.
    """
    methods: dict[Any, list[tuple[Any, float, float]]] = {}
    for i, r in enumerate(summary_rows):
        for k in (x, method_key, mean):
            if k not in r:
                raise DataError(f"summary row {i} has no {k!r}; summarize with by=({x!r}, {method_key!r})")
        s = r.get(std)
        methods.setdefault(r[method_key], []).append((r[x], float(r[mean]), float(s) if _is_finite(s) else 0.0))
    if not methods:
        raise DataError("no summary rows to plot; summarize some finished runs first")
    budgets = list(dict.fromkeys(p[0] for pts in methods.values() for p in pts))
    numeric = all(_is_finite(b) for b in budgets)
    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    ax = fig.subplots()
    if len(budgets) == 1:
        names = [str(m) for m in methods]
        for j, (method, pts) in enumerate(methods.items()):
            _, m, sd = pts[0]
            ax.errorbar([j], [m], yerr=[sd], marker=MARKERS[j % len(MARKERS)], markersize=6, capsize=4,
                        linestyle="none", color=f"C{j}", label=str(method))
        ax.set_xticks(range(len(names)), names, rotation=30 if max(map(len, names)) > 10 else 0,
                      ha="right" if max(map(len, names)) > 10 else "center")
        ax.set_xlim(-0.6, len(names) - 0.4)
        _style(ax, f"method ({_axis_name(x)}: {budgets[0]})", ylabel)
        if ax.get_legend() is not None:
            ax.get_legend().remove()  # the categories already name the methods
    else:
        order = sorted(budgets, key=float) if numeric else budgets
        pos = {b: (float(b) if numeric else i) for i, b in enumerate(order)}
        for j, (method, pts) in enumerate(methods.items()):
            pts.sort(key=lambda p: order.index(p[0]))
            ax.errorbar([pos[p[0]] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker=MARKERS[j % len(MARKERS)], markersize=5, linewidth=1.5, capsize=3, label=str(method))
        if not numeric:
            ax.set_xticks(range(len(order)), [str(b) for b in order])
        elif logx:
            ax.set_xscale("log")
        _style(ax, _axis_name(x), ylabel)
    if title:
        ax.set_title(title)
    return fig


def _axis_name(key: str) -> str:
    return "number of labels" if key == "labels" else key


def plot_group_accuracy(rows: Sequence[Record], path: str | os.PathLike[str], title: str = "", **options: Any) -> Path:
    """Write `group_accuracy_figure(rows, title, **options)` to `path` as PNG."""
    return save_png(group_accuracy_figure(rows, title, **options), path)


def group_accuracy_figure(
    rows: Sequence[Record],
    title: str = "",
    *,
    group: str = "group",
    series: Sequence[tuple[str, str, str]] = (("acc", "acc_std", "accuracy"),
                                              ("balanced_acc", "balanced_acc_std", "balanced accuracy")),
    ylabel: str = "test accuracy (%)",
) -> Figure:
    """One category per row (`group`), each series (mean key, std key, label) a marker with ±std error bars
    (std over seeds; none for a single run), side by side within the category."""
    if not rows:
        raise DataError("no rows to plot; finish some runs first")
    names = [str(r.get(group, i)) for i, r in enumerate(rows)]
    present = [s for s in series if any(_is_finite(r.get(s[0])) for r in rows)]
    fig = Figure(figsize=(max(5.0, 0.6 * len(rows) + 2.0), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.25
    for j, (m, sd, label) in enumerate(present):
        off = (j - (len(present) - 1) / 2) * width
        pts = [(i + off, float(r[m]), float(r[sd]) if _is_finite(r.get(sd)) else 0.0)
               for i, r in enumerate(rows) if _is_finite(r.get(m))]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker=MARKERS[j],
                    linestyle="none", capsize=3, label=label)
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center", fontsize="small")
    ax.set_xlim(-0.6, len(names) - 0.4)
    _style(ax, group, ylabel)
    if title:
        ax.set_title(title)
    return fig


def plot_confusion(conf: Sequence[Sequence[int]], path: str | os.PathLike[str], classes: Sequence[str] | None = None,
                   title: str = "") -> Path:
    """Write `confusion_figure(conf, classes, title)` to `path` as PNG."""
    return save_png(confusion_figure(conf, classes, title), path)


def confusion_figure(conf: Sequence[Sequence[int]], classes: Sequence[str] | None = None, title: str = "") -> Figure:
    """The confusion matrix, rows = true class, columns = predicted, each row as % of its class's test images
    (so the diagonal is the per-class accuracy); counts written in the cells up to 20 classes, class names on the
    axes up to 60."""
    import numpy as np

    from .confusion import class_names

    m = np.asarray(conf, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise DataError(f"a confusion matrix must be square C×C counts, got shape {m.shape}")
    c = m.shape[0]
    names = class_names(classes, c)
    support = m.sum(axis=1, keepdims=True)
    pct = np.divide(100.0 * m, support, out=np.zeros_like(m), where=support > 0)
    side = min(max(4.5, 0.28 * c + 2.5), 30.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of the true class")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if pct[i, j] > 50 else "black")
    if c <= 60:
        ax.set_xticks(range(c), names, rotation=90, fontsize=7 if c > 20 else 8)
        ax.set_yticks(range(c), names, fontsize=7 if c > 20 else 8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    diag = [pct[i, i] for i in range(c) if support[i, 0] > 0]
    ax.set_title(title or f"confusion matrix ({c} classes; balanced accuracy "
                          f"{sum(diag) / len(diag) if diag else float('nan'):.1f}%)")
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
    """Axis labels, light grid, legend; an epoch (or step) axis gets integer ticks."""
    if xlabel in ("epoch", "step", "cycle"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
