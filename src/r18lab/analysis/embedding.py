"""Embeddings of chosen classes: 2-D t-SNE maps and separability numbers of penultimate features.

Paper 003 (Fig. 2/3, §6 L185–L187; spec 003 claim C12, check T4) shows t-SNE maps of the pooled penultimate
activations of the 3 classes the NR baseline handles worst, for the teacher, R, NR and NR+KD. The maps are
qualitative; the numbers here make the claim testable: the silhouette score and the between/within scatter
ratio, both computed in the ORIGINAL feature space (a t-SNE map distorts distances, so it is only drawn).

Why scikit-learn's TSNE and not our own: t-SNE's result depends on many details (perplexity calibration by
binary search, early exaggeration, Barnes–Hut gradients, learning-rate and momentum schedules, PCA init
scaling); scikit-learn's implementation is the well-tested reference readers compare with, it is already a
dependency, and with `init="pca"` and a fixed `random_state` it is deterministic. A re-implementation would
add code to maintain and maps nobody could compare with published ones.

Everything here is pure: arrays in, numbers (and 2-D points) out. Plots live in `embedding_plots`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

TSNE_MIN_ITER = 250
"""scikit-learn's lower bound on TSNE(max_iter=...) (the parameter was `n_iter` before 1.5)."""


def _points(features, name: str = "features") -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ConfigError(f"{name} must be a non-empty N×F array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError(f"{name} hold NaN or infinite values; check the model's outputs")
    return x


def _labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ConfigError(f"labels must have shape ({n},) to match the features, got {y.shape}")
    return y


def _need_two_classes(y: np.ndarray, what: str) -> None:
    k = len(np.unique(y))
    if k < 2 or k > len(y) - 1:
        raise ConfigError(f"{what} needs between 2 and n − 1 = {len(y) - 1} classes among its {len(y)} points, "
                          f"got {k}; select at least 2 classes with more than one point in total")


def tsne_2d(features, seed: int, perplexity: float = 30.0, max_iter: int = 1000) -> np.ndarray:
    """N×2 t-SNE map (van der Maaten & Hinton 2008) by sklearn.manifold.TSNE, init="pca", random_state=seed."""
    from sklearn.manifold import TSNE

    x = _points(features)
    if x.shape[1] < 2:
        raise ConfigError(f"t-SNE with PCA init needs features of at least 2 dimensions, got {x.shape[1]}")
    if not (0 < perplexity < len(x)):
        raise ConfigError(f"perplexity {perplexity:g} must be above 0 and below the number of points ({len(x)}); "
                          "lower --perplexity or select more images (--max-per-class, --classes)")
    if max_iter < TSNE_MIN_ITER:
        raise ConfigError(f"t-SNE max_iter must be at least {TSNE_MIN_ITER} (scikit-learn's minimum), got {max_iter}")
    tsne = TSNE(n_components=2, perplexity=float(perplexity), init="pca", learning_rate="auto",
                max_iter=int(max_iter), random_state=int(seed))
    return tsne.fit_transform(x).astype(np.float64)


def silhouette(features, labels) -> float:
    """mean_i (b_i − a_i)/max(a_i, b_i), a/b: mean distance to own/nearest other class (Rousseeuw 1987; sklearn)."""
    from sklearn.metrics import silhouette_score

    x = _points(features)
    y = _labels(labels, len(x))
    _need_two_classes(y, "the silhouette score")
    return float(silhouette_score(x, y, metric="euclidean"))


def scatter_ratio(features, labels) -> float:
    """tr(S_B)/tr(S_W) = Σ_c n_c‖μ_c − μ‖² / Σ_c Σ_{i∈c}‖x_i − μ_c‖² (Fisher 1936; Duda et al. §3.8); inf if S_W = 0."""
    x = _points(features)
    y = _labels(labels, len(x))
    _need_two_classes(y, "the scatter ratio")
    mu = x.mean(0)
    between = within = 0.0
    for c in np.unique(y):
        xc = x[y == c]
        mc = xc.mean(0)
        between += len(xc) * float(np.sum((mc - mu) ** 2))
        within += float(np.sum((xc - mc) ** 2))
    return float("inf") if within == 0 else between / within


def per_class_accuracy(labels, predictions) -> dict[int, float]:
    """Class → mean(prediction == label) over that class's samples (%), for every class present in labels."""
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(predictions).astype(np.int64)
    if p.shape != y.shape or y.ndim != 1:
        raise ConfigError(f"labels {y.shape} and predictions {p.shape} must be two vectors of one length")
    return {int(c): float((p[y == c] == c).mean() * 100) for c in np.unique(y)}


def worst_classes(labels, predictions, k: int) -> list[int]:
    """The k classes with the lowest accuracy mean(pred == c | label == c), ties by class index (spec 003 §6 T4)."""
    acc = per_class_accuracy(labels, predictions)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"worst:k needs an integer k >= 1, got {k!r}")
    if k > len(acc):
        raise ConfigError(f"worst:{k} asks for more classes than the {len(acc)} with images; use worst:{len(acc)} "
                          "or fewer")
    return sorted(acc, key=lambda c: (acc[c], c))[:int(k)]


def embedding_rows(features_by_label: Mapping[str, Any], labels, seed: int, perplexity: float = 30.0,
                   max_iter: int = 1000) -> list[dict[str, Any]]:
    """One row per model: label, n, silhouette, scatter_ratio (original space) and its t-SNE `points` (n×2).

    Every model's features must describe the same images (same rows, same `labels`); each gets its own t-SNE
    with the same seed, so the maps differ only through the features.
    """
    if not features_by_label:
        raise ConfigError("embedding_rows needs the features of at least one model")
    rows = []
    for label, feats in features_by_label.items():
        x = _points(feats, f"features of {label}")
        y = _labels(labels, len(x))
        rows.append({"label": str(label), "n": int(len(x)), "silhouette": silhouette(x, y),
                     "scatter_ratio": scatter_ratio(x, y),
                     "points": tsne_2d(x, seed=seed, perplexity=perplexity, max_iter=max_iter)})
    return rows


def select_rows(labels, classes: Sequence[int], max_per_class: int | None = None, seed: int = 0) -> np.ndarray:
    """Sorted row indices whose label is in `classes`; at most `max_per_class` per class, drawn with `seed`."""
    y = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        rows = np.flatnonzero(y == c)
        if len(rows) == 0:
            raise ConfigError(f"class {c} has no images in this split; choose other --classes")
        if max_per_class is not None and len(rows) > max_per_class:
            rows = rng.choice(rows, size=max_per_class, replace=False)
        keep.append(rows)
    return np.sort(np.concatenate(keep)).astype(np.int64)


def parse_classes(text: str, num_classes: int) -> tuple[str, Any]:
    """`worst:K` → ("worst", K); `all` → ("list", [0..C−1]); `0,3,5` → ("list", [0, 3, 5]); ≥ 2 classes, in range."""
    text = str(text).strip()
    if num_classes < 2:
        raise ConfigError(f"the models have {num_classes} class; an embedding needs at least 2")
    if text.startswith("worst:"):
        try:
            k = int(text.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"--classes {text!r}: worst:K needs an integer K, e.g. worst:3") from None
        if k < 2:
            raise ConfigError(f"--classes {text} selects {k} class; silhouette and scatter ratio need at least 2, "
                              "e.g. worst:3")
        if k > num_classes:
            raise ConfigError(f"--classes {text} asks for more classes than the models have ({num_classes}); "
                              f"use worst:{num_classes} or fewer")
        return "worst", k
    if text == "all":
        return "list", list(range(num_classes))
    try:
        picked = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--classes {text!r} is not worst:K, all, or comma-separated class indices "
                          "like 0,3,5") from None
    bad = [c for c in picked if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--classes: class {bad[0]} is out of range; the models have classes 0..{num_classes - 1}")
    if len(set(picked)) != len(picked):
        dup = next(c for c in picked if picked.count(c) > 1)
        raise ConfigError(f"--classes lists class {dup} twice; list each class once")
    if len(picked) < 2:
        raise ConfigError(f"--classes {text!r} selects {len(picked)} class; silhouette and scatter ratio need "
                          "at least 2, e.g. 0,1")
    return "list", picked


__all__ = ["embedding_rows", "parse_classes", "per_class_accuracy", "scatter_ratio", "select_rows", "silhouette",
           "tsne_2d", "worst_classes"]
