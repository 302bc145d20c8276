"""plots: what each figure draws (read back from the Figure) and that PNGs are written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from r18lab.errors import DataError
from r18lab.results.plots import (
    accuracy_vs_labels_figure,
    learning_curves_figure,
    plot_accuracy_vs_labels,
    plot_learning_curves,
    plot_series,
    series_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records() -> list[dict]:
    recs = []
    for e in range(6):
        r = {"epoch": e, "train/loss": 2.0 / (e + 1), "lr": 0.1 * (1 - e / 6), "step": 100 * e}
        if e % 2 == 1:  # evaluated every other epoch
            r.update({"eval/main/acc": 10.0 * e, "eval/fr/acc": 5.0 * e, "eval/main/loss": 1.0 / e})
        recs.append(r)
    recs[3]["eval/fr/acc"] = float("nan")  # a NaN point is skipped, not plotted
    return recs


def _lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}


def test_learning_curves_panels_and_data() -> None:
    fig = learning_curves_figure(_records(), title="run 7")
    loss_ax, acc_ax, lr_ax = fig.axes
    assert (loss_ax.get_ylabel(), acc_ax.get_ylabel(), lr_ax.get_ylabel()) == ("loss", "accuracy", "learning rate")
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    loss = _lines(loss_ax)
    assert list(loss) == ["train/loss", "eval/main/loss"]
    assert loss["train/loss"] == ([0, 1, 2, 3, 4, 5], [2.0, 1.0, 2 / 3, 0.5, 0.4, 2 / 6])
    assert loss["eval/main/loss"] == ([1, 3, 5], [1.0, 1 / 3, 0.2])
    acc = _lines(acc_ax)
    assert acc == {"eval/main": ([1, 3, 5], [10.0, 30.0, 50.0]), "eval/fr": ([1, 5], [5.0, 25.0])}
    assert list(_lines(lr_ax)) == ["lr"]
    assert fig._suptitle.get_text() == "run 7"


def test_learning_curves_without_lr_has_two_panels() -> None:
    recs = [{k: v for k, v in r.items() if k != "lr"} for r in _records()]
    assert len(learning_curves_figure(recs).axes) == 2


def test_learning_curves_need_loss_or_accuracy() -> None:
    with pytest.raises(DataError, match="no loss or accuracy"):
        learning_curves_figure([{"epoch": 0, "lr": 0.1}])


def test_plot_learning_curves_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "figs" / "curves.png"
    assert plot_learning_curves(_records(), path) == path
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.ndim == 3 and img.shape[1] > img.shape[0] > 100  # three panels side by side
    assert os.listdir(path.parent) == ["curves.png"]


def _summary() -> list[dict]:
    return [
        {"labels": 400, "method": "ce", "mean": 60.0, "std": 1.0},
        {"labels": 100, "method": "ce", "mean": 40.0, "std": 2.0},
        {"labels": 100, "method": "ours", "mean": 45.0, "std": 0.5},
        {"labels": 200, "method": "ce", "mean": 50.0, "std": 1.5},
        {"labels": 400, "method": "ours", "mean": 64.0, "std": float("nan")},
    ]


def _errorbars(ax) -> dict[str, tuple[list[float], list[float], dict[float, tuple[float, float]]]]:
    """label → (xs, means, {x: (low, high) of its error bar}) of each errorbar container."""
    out = {}
    for c in ax.containers:
        line, _, (bars,) = c.lines
        spans = {float(seg[0][0]): (float(min(seg[:, 1])), float(max(seg[:, 1]))) for seg in bars.get_segments()}
        out[c.get_label()] = (list(line.get_xdata()), list(line.get_ydata()), spans)
    return out


def test_accuracy_vs_labels_lines_error_bars_and_markers() -> None:
    fig = accuracy_vs_labels_figure(_summary(), "CIFAR-10, 5 seeds")
    (ax,) = fig.axes
    bars = _errorbars(ax)
    assert {k: v[:2] for k, v in bars.items()} == {"ce": ([100.0, 200.0, 400.0], [40.0, 50.0, 60.0]),
                                                   "ours": ([100.0, 400.0], [45.0, 64.0])}
    for x, lo, hi in [(100, 38.0, 42.0), (200, 48.5, 51.5), (400, 59.0, 61.0)]:
        assert bars["ce"][2][x] == pytest.approx((lo, hi))  # ± std over seeds
    assert bars["ours"][2][400.0] == (64.0, 64.0)  # NaN std (a single run) draws no bar
    assert ax.containers[0].lines[0].get_marker() != ax.containers[1].lines[0].get_marker()
    assert ax.get_xlabel() == "number of labels" and ax.get_title() == "CIFAR-10, 5 seeds"


def test_one_label_budget_is_drawn_as_method_categories() -> None:
    rows = [{"labels": 1670, "method": "ce", "mean": 50.0, "std": 2.0},
            {"labels": 1670, "method": "fr", "mean": 55.0, "std": 1.0}]
    (ax,) = accuracy_vs_labels_figure(rows).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ce", "fr"]
    assert list(ax.get_xticks()) == [0, 1]  # categories, not a numeric axis around x = 1670
    assert ax.get_xlabel() == "method (number of labels: 1670)"
    bars = _errorbars(ax)
    assert bars["ce"][2][0.0] == (48.0, 52.0) and bars["fr"][2][1.0] == (54.0, 56.0)


def test_non_numeric_budgets_are_evenly_spaced_categories() -> None:
    rows = [{"labels": 40, "method": "ce", "mean": 30.0, "std": 1.0},
            {"labels": "all", "method": "ce", "mean": 60.0, "std": 1.0}]
    (ax,) = accuracy_vs_labels_figure(rows).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["40", "all"]
    assert _errorbars(ax)["ce"][:2] == ([0, 1], [30.0, 60.0])


def test_epoch_axes_get_integer_ticks() -> None:
    recs = [{"epoch": e, "train/loss": 1.0 / e, "eval/main/acc": 10.0 * e, "eval/main/balanced_acc": 9.0 * e}
            for e in (1, 2, 3)]
    fig = learning_curves_figure(recs)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)
    acc = _lines(fig.axes[1])
    assert acc["eval/main (balanced)"] == ([1.0, 2.0, 3.0], [9.0, 18.0, 27.0])  # balanced accuracy, dashed
    assert fig.axes[1].get_lines()[1].get_linestyle() == "--"


def test_accuracy_vs_labels_errors_and_png(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no 'labels'"):
        accuracy_vs_labels_figure([{"cycle": 0, "method": "ce", "mean": 1.0, "std": 0.0}])
    with pytest.raises(DataError, match="no summary rows"):
        accuracy_vs_labels_figure([])
    path = plot_accuracy_vs_labels(_summary(), tmp_path / "acc.png", "t")
    assert path.read_bytes()[:8] == PNG_MAGIC


def _layer_records(n_layers: int) -> list[dict]:
    return [{"epoch": e, "beta/x": 9.0, **{f"alpha/layer{i}.conv1": i + 0.1 * e for i in range(n_layers)}}
            for e in range(3)]


def test_series_glob_selects_matching_keys() -> None:
    fig = series_figure(_layer_records(3), ["alpha/*"], title="alpha per layer")
    (ax,) = fig.axes
    lines = _lines(ax)
    assert list(lines) == ["alpha/layer0.conv1", "alpha/layer1.conv1", "alpha/layer2.conv1"]
    assert lines["alpha/layer2.conv1"] == ([0, 1, 2], [2.0, 2.1, 2.2])
    assert ax.get_ylabel() == "alpha" and ax.get_xlabel() == "epoch"
    assert list(_lines(series_figure(_layer_records(3), ["beta/x", "alpha/layer1.conv1"]).axes[0])) == [
        "beta/x", "alpha/layer1.conv1"]


def test_series_many_layers_use_a_colormap(tmp_path: Path) -> None:
    fig = series_figure(_layer_records(12), ["alpha/*"])
    colors = {ln.get_color() for ln in fig.axes[0].get_lines()}
    assert len(colors) == 12  # the default cycle has only 10 colours
    assert plot_series(_layer_records(12), ["alpha/*"], tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC


def test_series_without_match_names_available_keys() -> None:
    with pytest.raises(DataError, match="available keys include: beta/x"):
        series_figure(_layer_records(1), ["gamma/*"])
