"""`analyze embedding` (paper 003 Fig. 2, spec 003 C12/T4): separability numbers checked by hand, worst-class
choice, t-SNE determinism, the panel plot, and the CLI end to end with its bad inputs."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from r18lab.analysis.embedding import (embedding_rows, parse_classes, per_class_accuracy, scatter_ratio,
                                       select_rows, silhouette, tsne_2d, worst_classes)
from r18lab.analysis.embedding_plots import plot_embedding_panel
from r18lab.cli import main
from r18lab.errors import ConfigError
from r18lab.models import create_model
from r18lab.models.io import Preprocessing, save_model
from r18lab.predict import predict

from helpers import tiny

DATA = ["--data", "synthetic", "num_classes=4", "image_size=8", "n=64"]  # 16 test images per class
FAST = 250  # scikit-learn's smallest TSNE max_iter


# -- scatter ratio and silhouette by hand -------------------------------------------------------------------
def test_scatter_ratio_by_hand():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]])
    y = np.array([0, 0, 1, 1])
    # μ0 = (1,0), μ1 = (11,0), μ = (6,0): tr S_B = 2·25 + 2·25 = 100; tr S_W = 1+1+1+1 = 4
    assert scatter_ratio(x, y) == pytest.approx(25.0)
    # three classes in 2-D: tr S_B = Σ n_c‖μ_c − μ‖², tr S_W = Σ‖x − μ_c‖², written out
    x3 = np.array([[0, 0], [0, 2], [4, 0], [6, 0], [5, 5], [5, 9]], dtype=float)
    y3 = np.array([2, 2, 0, 0, 1, 1])
    mu = x3.mean(0)  # (10/3, 8/3)
    means = {0: np.array([5.0, 0.0]), 1: np.array([5.0, 7.0]), 2: np.array([0.0, 1.0])}
    sb = sum(2 * np.sum((m - mu) ** 2) for m in means.values())
    sw = 2 + 2 + 8  # class 2: 1+1, class 0: 1+1, class 1: 4+4
    assert scatter_ratio(x3, y3) == pytest.approx(sb / sw)
    assert scatter_ratio(x3 * 7.0 + 3.0, y3) == pytest.approx(sb / sw)  # invariant to scale and shift
    assert math.isinf(scatter_ratio([[0, 0], [0, 0], [1, 1], [1, 1]], [0, 0, 1, 1]))  # no within-class scatter


def manual_silhouette(x: np.ndarray, y: np.ndarray) -> float:
    """Rousseeuw (1987) written out: s_i = (b_i − a_i)/max(a_i, b_i), s_i = 0 for a singleton class."""
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    s = []
    for i in range(len(x)):
        own = (y == y[i]) & (np.arange(len(x)) != i)
        if not own.any():
            s.append(0.0)
            continue
        a = d[i, own].mean()
        b = min(d[i, y == c].mean() for c in np.unique(y) if c != y[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def test_silhouette_matches_the_formula_by_hand():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [4.0, 4.0], [5.0, 3.0]])
    y = np.array([0, 0, 0, 1, 1])
    assert silhouette(x, y) == pytest.approx(manual_silhouette(x, y), rel=1e-12)
    # 4 collinear points, computed on paper: a0 = 1, b0 = (10+11)/2 … worked through for every point
    x4 = np.array([[0.0], [1.0], [10.0], [11.0]])
    x4 = np.hstack([x4, np.zeros_like(x4)])
    s0, s1 = (10.5 - 1) / 10.5, (9.5 - 1) / 9.5
    assert silhouette(x4, [0, 0, 1, 1]) == pytest.approx((s0 + s1 + s1 + s0) / 4)
    # a singleton class contributes 0 (3 classes, one of size 1)
    y3 = np.array([0, 0, 1, 2, 2])
    assert silhouette(x, y3) == pytest.approx(manual_silhouette(x, y3), rel=1e-12)


def test_separated_clusters_score_higher_than_overlapping_ones():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    centres = np.array([[0.0] * 8, [1.0] * 8, [-1.0] + [0.0] * 7])
    noise = rng.normal(size=(60, 8))
    tight = centres[y] * 10 + noise * 0.5
    broad = centres[y] * 1 + noise * 2.0
    assert silhouette(tight, y) > silhouette(broad, y) + 0.3
    assert scatter_ratio(tight, y) > 10 * scatter_ratio(broad, y)
    rows = embedding_rows({"tight": tight, "broad": broad}, y, seed=0, perplexity=10, max_iter=FAST)
    assert [r["label"] for r in rows] == ["tight", "broad"]
    assert all(r["n"] == 60 and r["points"].shape == (60, 2) for r in rows)
    assert rows[0]["silhouette"] == pytest.approx(silhouette(tight, y))  # original space, not the map
    assert rows[0]["silhouette"] > rows[1]["silhouette"] and rows[0]["scatter_ratio"] > rows[1]["scatter_ratio"]


def test_separability_needs_two_classes():
    x = np.arange(8.0).reshape(4, 2)
    for fn in (silhouette, scatter_ratio):
        with pytest.raises(ConfigError, match="at least 2 classes"):
            fn(x, [1, 1, 1, 1])
        with pytest.raises(ConfigError, match="shape"):
            fn(x, [0, 1])


# -- worst classes -----------------------------------------------------------------------------------------
def test_worst_classes_on_a_constructed_confusion():
    # confusion rows (true class) → predicted counts; per-class accuracy: 0: 9/10, 1: 2/10, 2: 5/10, 3: 2/10, 4: 10/10
    confusion = np.array([[9, 1, 0, 0, 0],
                          [3, 2, 5, 0, 0],
                          [0, 5, 5, 0, 0],
                          [0, 0, 0, 2, 8],
                          [0, 0, 0, 0, 10]])
    labels = np.concatenate([[t] * confusion[t].sum() for t in range(5)])
    preds = np.concatenate([np.repeat(np.arange(5), confusion[t]) for t in range(5)])
    perm = np.random.default_rng(1).permutation(len(labels))  # row order does not matter
    labels, preds = labels[perm], preds[perm]
    assert per_class_accuracy(labels, preds) == {0: 90.0, 1: 20.0, 2: 50.0, 3: 20.0, 4: 100.0}
    assert worst_classes(labels, preds, 1) == [1]  # 1 and 3 tie at 20 %: the lower index first
    assert worst_classes(labels, preds, 2) == [1, 3]
    assert worst_classes(labels, preds, 3) == [1, 3, 2]
    assert worst_classes(labels, preds, 5) == [1, 3, 2, 0, 4]
    with pytest.raises(ConfigError, match="worst:5 or fewer"):
        worst_classes(labels, preds, 6)


def test_parse_classes_and_select_rows():
    assert parse_classes("worst:3", 10) == ("worst", 3)
    assert parse_classes("all", 4) == ("list", [0, 1, 2, 3])
    assert parse_classes("0,3,5", 10) == ("list", [0, 3, 5])
    for text, msg in (("0,10", "class 10 is out of range"), ("worst:11", "use worst:10"), ("worst:1", "at least 2"),
                      ("4", "at least 2"), ("1,1,2", "twice"), ("cats", "not worst:K")):
        with pytest.raises(ConfigError, match=msg):
            parse_classes(text, 10)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(select_rows(labels, [0, 2]), [0, 2, 3, 5, 6, 8, 9])
    few = select_rows(labels, [0, 2], max_per_class=2, seed=3)
    assert len(few) == 4 and list(labels[few]).count(0) == 2 and np.all(np.diff(few) > 0)
    np.testing.assert_array_equal(few, select_rows(labels, [0, 2], max_per_class=2, seed=3))
    with pytest.raises(ConfigError, match="class 3 has no images"):
        select_rows(labels, [0, 3])


# -- t-SNE -------------------------------------------------------------------------------------------------
def test_tsne_is_deterministic_and_2d():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (15, 6)), rng.normal(6, 1, (15, 6))]).astype(np.float32)
    a = tsne_2d(x, seed=3, perplexity=5, max_iter=FAST)
    b = tsne_2d(x, seed=3, perplexity=5, max_iter=FAST)
    assert a.shape == (30, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # the two input clusters stay apart in the map
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    assert d[:15, 15:].min() > max(d[:15, :15].mean(), d[15:, 15:].mean())
    with pytest.raises(ConfigError, match="below the number of points"):
        tsne_2d(x, seed=0, perplexity=30)
    with pytest.raises(ConfigError, match="at least 250"):
        tsne_2d(x, seed=0, perplexity=5, max_iter=10)


def test_panel_plot(tmp_path):
    y = np.repeat([1, 3], 5)
    rows = [{"label": name, "points": np.random.default_rng(i).normal(size=(10, 2)), "silhouette": 0.5,
             "scatter_ratio": s} for i, (name, s) in enumerate([("teacher", 2.0), ("NR", math.inf)])]
    out = plot_embedding_panel(rows, y, tmp_path / "panel.png", class_names=["a", "b", "c", "d"])
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- CLI end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny checkpoints trained on 4-class synthetic data (R and NR), a few seconds in all."""
    root = tmp_path_factory.mktemp("emb")
    store = str(root / "store.sqlite")
    out = {}
    for name, extra in (("R", []), ("NR", ["model.transforms=[no_residual]"])):
        out[name] = root / name / "seed0"
        assert main(["train", *tiny(*extra), "--out", str(out[name]), "--store", store]) == 0
    return {k: v / "model.safetensors" for k, v in out.items()}


def test_cli_end_to_end(ckpts, tmp_path, capsys):
    r, nr = str(ckpts["R"]), str(ckpts["NR"])
    capsys.readouterr()
    png, table = tmp_path / "panel.png", tmp_path / "table.csv"
    assert main(["analyze", "embedding", r, nr, *DATA, "--ref", nr, "--perplexity", "10",
                 "--plot", str(png), "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    assert "| R/seed0 " in out and "| NR/seed0 " in out and "silhouette" in out and "worst 3 of" in out
    assert png.stat().st_size > 1000
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [x["label"] for x in rows] == ["R/seed0", "NR/seed0"]
    assert {"classes", "n", "silhouette", "scatter_ratio"} <= set(rows[0])

    # JSON: the classes come from --ref (NR), the same images for both, numbers from the original space
    assert main(["analyze", "embedding", r, nr, *DATA, "--ref", nr, "--perplexity", "10", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    p_nr = predict(nr, "synthetic", data_options={"num_classes": 4, "image_size": 8, "n": 64}, device="cpu")
    worst = worst_classes(p_nr.labels, p_nr.logits["main"].argmax(1), 3)
    assert res["classes"] == worst and res["selection"] == "worst"
    rows_idx = np.array(res["indices"])
    assert len(rows_idx) == 48 and set(p_nr.labels[rows_idx]) == set(worst)  # 16 test images per class
    assert res["labels"] == p_nr.labels[rows_idx].tolist()
    assert [x["label"] for x in res["rows"]] == ["R/seed0", "NR/seed0"]
    for row, path in zip(res["rows"], (r, nr)):
        assert row["n"] == 48 and np.asarray(row["points"]).shape == (48, 2)
        feats = predict(path, "synthetic", indices=rows_idx, device="cpu",
                        data_options={"num_classes": 4, "image_size": 8, "n": 64}).features
        assert row["silhouette"] == pytest.approx(silhouette(feats, p_nr.labels[rows_idx]), abs=1e-6)
        assert row["scatter_ratio"] == pytest.approx(scatter_ratio(feats, p_nr.labels[rows_idx]), rel=1e-5)
    nr_row = res["rows"][1]
    np.testing.assert_allclose(nr_row["points"], tsne_2d(p_nr.features[rows_idx], seed=0, perplexity=10),
                               rtol=1e-4, atol=1e-4)  # same seed → the same map

    # a reference that is not shown still picks the classes
    assert main(["analyze", "embedding", r, *DATA, "--ref", nr, "--max-per-class", "4", "--perplexity", "5",
                 "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["classes"] == worst and [x["n"] for x in alone["rows"]] == [12]

    # DATA as the last positional, explicit classes, logits, names, a subsample per class
    assert main(["analyze", "embedding", r, nr, "synthetic", "num_classes=4", "image_size=8", "n=64",
                 "--classes", "0,2", "--features", "logits", "--labels", "R,NR", "--max-per-class", "5",
                 "--perplexity", "3", "--json"]) == 0
    res2 = json.loads(capsys.readouterr().out)
    assert res2["classes"] == [0, 2] and res2["selection"] == "list" and res2["ref"] is None
    assert [x["label"] for x in res2["rows"]] == ["R", "NR"] and all(x["n"] == 10 for x in res2["rows"])
    logits = predict(r, "synthetic", indices=res2["indices"], device="cpu",
                     data_options={"num_classes": 4, "image_size": 8, "n": 64}).logits["main"]
    assert res2["rows"][0]["silhouette"] == pytest.approx(silhouette(logits, res2["labels"]), abs=1e-6)


def _one_line_error(rc, err: str, fragment: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def test_cli_bad_inputs_change_nothing(ckpts, tmp_path, capsys):
    r, nr = str(ckpts["R"]), str(ckpts["NR"])
    other = tmp_path / "other" / "model.safetensors"  # same architecture, 4 classes named differently
    other.parent.mkdir()
    save_model(create_model("resnet18", num_classes=4, width=0.0625), other,
               {"name": "resnet18", "num_classes": 4, "stem": "cifar", "width": 0.0625, "heads": ["main"],
                "gate": None, "peers": 1},
               preprocessing=Preprocessing.of((0.5,) * 3, (0.25,) * 3, (3, 8, 8), ["a", "b", "c", "d"]))
    png, table = tmp_path / "panel.png", tmp_path / "table.csv"
    png.write_bytes(b"old png")
    table.write_text("old csv")
    keep = ["--plot", str(png), "--csv", str(table)]
    cases = [
        (["--classes", "0,4"], "class 4 is out of range"),
        (["--classes", "worst:5"], "use worst:4 or fewer"),
        (["--classes", "worst:1"], "at least 2"),
        (["--classes", "3"], "at least 2"),
        (["--max-per-class", "4", "--perplexity", "30"], "must be below the number of points (12)"),
        (["--head", "fr"], "no head 'fr'"),
    ]
    for extra, fragment in cases:
        capsys.readouterr()
        rc = main(["analyze", "embedding", r, nr, *DATA, *extra, *keep])
        _one_line_error(rc, capsys.readouterr().err, fragment)
    capsys.readouterr()
    rc = main(["analyze", "embedding", r, str(other), *DATA, *keep])
    _one_line_error(rc, capsys.readouterr().err, "same classes")
    rc = main(["analyze", "embedding", r, nr, *keep])  # no data
    _one_line_error(rc, capsys.readouterr().err, "--data SOURCE")
    rc = main(["analyze", "spectrum", r, "--classes", "0,1"])  # an embedding option on spectrum
    _one_line_error(rc, capsys.readouterr().err, "--classes belongs to `r18lab analyze embedding`")
    assert png.read_bytes() == b"old png" and table.read_text() == "old csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "panel.png", "table.csv"]  # no temp files
