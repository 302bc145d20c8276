"""Downstream probes of a representation (spec 001 §2.3, §7.7–7.8): a linear SVM on frozen pooled features, with
C chosen by stratified k-fold CV on the training images; few-shot episodes shared by every model (paired); and the
feature extraction behind them, cached per (checkpoint identity, data, split, rows).

Pinned SVM details (the paper leaves them unstated; `svm_header` records them in every result): scikit-learn
`LinearSVC`, one-vs-rest, squared hinge, L2 penalty, primal solver (`dual=False`: a trust-region Newton method that
converges for large C and any n/d, where the dual coordinate descent stalls at C=1000 on thousands of images),
`max_iter=1000`, `tol=1e-4`, intercept fitted (and regularised, liblinear's `intercept_scaling=1`); features
L2-normalised per image (no fitted scaler, so nothing leaks from test or validation images); C ∈ {1e-3 … 1e3} in
decades by stratified k-fold mean accuracy (folds shuffled with the probe's seed; ties → the smaller C), then refit
on all training images; top-1 accuracy (%) on the test images.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import CheckpointError, ConfigError, DataError, R18Error
from ..models.io import IMAGENET_MEAN, IMAGENET_STD  # the normalisation of torchvision/timm ImageNet weights

C_GRID: tuple[float, ...] = tuple(10.0 ** k for k in range(-3, 4))
"""Default C grid: 1e-3 … 1e3 in decades (spec 001 §2.3, assumed)."""
FOLDS = 5
"""Cross-validation folds for C (paper 001 L59: "5-fold cross-validation")."""
SVM = {"estimator": "sklearn.svm.LinearSVC", "multi_class": "ovr", "loss": "squared_hinge", "penalty": "l2",
       "dual": False, "max_iter": 1000, "tol": 1e-4, "fit_intercept": True, "intercept_scaling": 1.0}
"""The LinearSVC settings every probe uses (spec 001 §7.7: pinned in the output header)."""
FEATURE_CACHE_FORMAT = "r18lab.probe-features/1"


# -- pure maths ---------------------------------------------------------------------------------------------
def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """x / max(‖x‖₂, eps) per row (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def check_c_grid(c_grid: Sequence[float]) -> tuple[float, ...]:
    """The grid sorted ascending; one line if it is empty or holds a value that is not a positive finite number."""
    try:
        values = [float(c) for c in c_grid]
    except (TypeError, ValueError):
        raise ConfigError(f"c_grid must be a list of positive numbers, e.g. c_grid=[0.01,0.1,1], got {c_grid!r}") \
            from None
    if not values or any(not (0 < c < float("inf")) for c in values):
        raise ConfigError(f"c_grid must be a non-empty list of positive finite numbers, got {c_grid!r}")
    return tuple(sorted(set(values)))


def svm_header(c_grid: Sequence[float] = C_GRID, folds: int = FOLDS, normalize: bool = True,
               seed: int = 0) -> dict[str, Any]:
    """The probe's fixed choices as one dict, stored in every result (spec 001 §7.7)."""
    return {**SVM, "c_grid": list(check_c_grid(c_grid)), "c_selection": f"stratified {folds}-fold CV mean accuracy, "
            "ties to the smaller C, refit on all training images (n_splits = min(folds, smallest class count); "
            "with one image in some class: the middle C of the grid)",
            "folds": folds, "fold_shuffle_seed": seed,
            "normalization": "per-image L2 (no fitted scaler)" if normalize else "none",
            "features": "pooled penultimate activations, eval mode, the checkpoint's stored preprocessing, "
                        "no augmentation",
            "metric": "top-1 accuracy (%) on the test images"}


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from sha256 of the parts joined by '|' (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def _class_rows(labels: np.ndarray) -> dict[int, np.ndarray]:
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def fewshot_episodes(labels: np.ndarray, shots: int, episodes: int, task_key: str, seed: int = 0,
                     class_names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Episode e = `shots` rows per class without replacement, drawn by default_rng(sha256(task_key, e, seed)): a
    function of (labels, task, episode, seed) only, so every representation sees the same episodes (§7.8)."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError(f"shots must be an integer >= 1, got {shots!r}")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be an integer >= 1, got {episodes!r}")
    rows = _class_rows(labels)
    for c, r in rows.items():
        if len(r) < shots:
            name = class_names[c] if class_names is not None and c < len(class_names) else c
            raise ConfigError(f"fewer images per class than shots: class {name} has {len(r)} training images, "
                              f"shots={shots}; lower shots or give a larger training pool")
    out = []
    for e in range(episodes):
        rng = np.random.default_rng(stable_seed(task_key, e, seed))
        out.append(np.sort(np.concatenate([rng.choice(r, shots, replace=False) for r in rows.values()])))
    return out


def cv_folds(labels: np.ndarray, folds: int = FOLDS, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, validation) rows with k = min(folds, smallest class count); [] when that is < 2
    (a class with one image: C cannot be cross-validated, the caller fixes it)."""
    from sklearn.model_selection import StratifiedKFold
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}")
    labels = np.asarray(labels)
    k = min(folds, min(len(r) for r in _class_rows(labels).values()))
    if k < 2:
        return []
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % 2 ** 32)
    return list(split.split(np.zeros((len(labels), 1)), labels))


class _Fitter:
    """LinearSVC fits with sklearn's per-call checks off (inputs are validated once) and predictions as one
    matmul — a 5-shot episode is 36 fits on a few images, where the checks cost more than liblinear."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed % 2 ** 32)  # unused by the primal solver; one instance, not one per fit
        self.unconverged = 0

    def accuracy(self, c: float, x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> float:
        import sklearn
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC
        params = {k: SVM[k] for k in ("loss", "penalty", "dual", "max_iter", "tol", "fit_intercept",
                                      "intercept_scaling")}
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = LinearSVC(C=c, random_state=self.rng, **params).fit(x, y)
        self.unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        scores = tx @ clf.coef_.T + clf.intercept_
        pred = clf.classes_[(scores[:, 0] > 0).astype(int)] if scores.shape[1] == 1 else clf.classes_[scores.argmax(1)]
        return float((pred == ty).mean() * 100)


def _check_xy(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if x.ndim != 2 or y.shape != (len(x),) or len(x) == 0:
        raise DataError(f"{what} must be n×d features with n labels, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{what} features hold NaN or infinite values; check the checkpoint (diverged weights?)")
    return x, y


def linear_svm_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     c_grid: Sequence[float] = C_GRID, folds: int = FOLDS, normalize: bool = True,
                     seed: int = 0) -> dict[str, Any]:
    """LinearSVC with C by stratified k-fold CV mean accuracy on the training images (ties → smaller C), refit on
    all of them, top-1 accuracy (%) on the test images (paper 001 L59; details in `SVM`)."""
    grid = check_c_grid(c_grid)
    x, y = _check_xy(train_x, train_y, "training")
    tx, ty = _check_xy(test_x, test_y, "test")
    if len(np.unique(y)) < 2:
        raise ConfigError("a linear probe needs at least two classes in the training images; choose more classes")
    if normalize:
        x, tx = l2_normalize(x), l2_normalize(tx)
    fit = _Fitter(seed)
    splits = cv_folds(y, folds, seed)
    if splits:
        cv = [float(np.mean([fit.accuracy(c, x[tr], y[tr], x[va], y[va]) for tr, va in splits])) for c in grid]
        best = int(np.argmax(cv))  # first maximum: the smallest C among ties
        chosen, selection, cv_acc = grid[best], f"cv{len(splits)}", cv[best]
    else:
        chosen, selection, cv, cv_acc = grid[len(grid) // 2], "fixed", [], None
    return {"C": chosen, "accuracy": fit.accuracy(chosen, x, y, tx, ty), "cv_accuracy": cv_acc,
            "cv_curve": dict(zip(map(str, grid), cv)), "c_selection": selection, "n_train": len(y),
            "n_test": len(ty), "unconverged_fits": fit.unconverged}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high): mean ± t_{(1+confidence)/2, n−1}·s/√n; None bounds for one value."""
    from ..results.stats import paired_t
    vals = [float(v) for v in values]
    mean, lo, hi, _, _ = paired_t(vals, [0.0] * len(vals), confidence)
    return mean, (None if lo != lo else lo), (None if hi != hi else hi)


def fewshot_probe(pool_x: np.ndarray, pool_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                  task_key: str, shots: int = 5, episodes: int = 50, seed: int = 0,
                  c_grid: Sequence[float] = C_GRID, folds: int = FOLDS, normalize: bool = True,
                  class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Mean top-1 accuracy (%) over `episodes` episodes of `shots` images per class from the pool, each probed by
    `linear_svm_probe` and tested on all test images, with a 95 % t-interval over episodes (paper 001 L55, L59)."""
    draws = fewshot_episodes(pool_y, shots, episodes, task_key, seed, class_names)
    x, y = _check_xy(pool_x, pool_y, "pool")
    tx, ty = _check_xy(test_x, test_y, "test")
    if normalize:  # per-image, so normalising once equals normalising each episode
        x, tx = l2_normalize(x), l2_normalize(tx)
    runs = [linear_svm_probe(x[rows], y[rows], tx, ty, c_grid, folds, False, seed) for rows in draws]
    accs = [r["accuracy"] for r in runs]
    mean, lo, hi = t_interval(accs)
    return {"mean": mean, "ci95": [lo, hi], "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "accuracies": accs, "C": [r["C"] for r in runs], "c_selection": sorted({r["c_selection"] for r in runs}),
            "indices": [rows.tolist() for rows in draws], "shots": shots, "episodes": episodes, "seed": seed,
            "task_key": task_key, "n_test": len(ty), "unconverged_fits": sum(r["unconverged_fits"] for r in runs),
            "svm": {**svm_header(c_grid, folds, normalize, seed), "paired_episodes": "episode e's images depend "
                    "only on (pool labels, task_key, e, seed): identical for every representation"}}


def full_probe(pool_x: np.ndarray, pool_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
               c_grid: Sequence[float] = C_GRID, folds: int = FOLDS, normalize: bool = True,
               seed: int = 0) -> dict[str, Any]:
    """One `linear_svm_probe` on the whole training pool (paper 001 L55: "all d-split training images")."""
    return {**linear_svm_probe(pool_x, pool_y, test_x, test_y, c_grid, folds, normalize, seed),
            "svm": svm_header(c_grid, folds, normalize, seed)}


def select_classes(labels: np.ndarray, class_names: Sequence[str],
                   wanted: Sequence[str | int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the wanted classes, their labels renumbered 0..k−1 in the order given); names or indices."""
    names = [str(c) for c in class_names]
    if isinstance(wanted, (str, int)) or not wanted:
        raise ConfigError(f"classes must be a non-empty list, e.g. classes=[{','.join(names[:3])}]")
    picked = []
    for w in wanted:
        if isinstance(w, str) and w in names:
            picked.append(names.index(w))
        elif isinstance(w, int) and not isinstance(w, bool) and 0 <= w < len(names):
            picked.append(w)
        else:
            raise ConfigError(f"class {w!r} is not in the dataset; available: {', '.join(names)}")
    if len(set(picked)) != len(picked):
        raise ConfigError(f"classes {list(wanted)} names a class twice; list each class once")
    labels = np.asarray(labels)
    lookup = np.full(max(len(names), int(labels.max(initial=0)) + 1), -1, dtype=np.int64)
    lookup[picked] = np.arange(len(picked))
    new = lookup[labels]
    rows = np.flatnonzero(new >= 0)
    return rows, new[rows]


# -- features -----------------------------------------------------------------------------------------------
def checkpoint_key(checkpoint) -> dict[str, Any]:
    """What a checkpoint's features depend on: its stored run identity (else the file's sha256), plus the spec and
    preprocessing a LoadedModel (e.g. `load_foreign`) was built with. Reads only metadata for a path."""
    from ..models.io import IDENTITY_META_KEY, LoadedModel, file_sha256, read_metadata
    if isinstance(checkpoint, LoadedModel):
        ident = checkpoint.identity or f"sha256:{file_sha256(checkpoint.path)}"
        pre = checkpoint.preprocessing.to_json() if checkpoint.preprocessing is not None else None
        return {"identity": ident, "spec": checkpoint.spec, "preprocessing": pre}
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give the path of a model.safetensors file")
    ident = read_metadata(path).get(IDENTITY_META_KEY) or f"sha256:{file_sha256(path)}"
    return {"identity": ident}


def features_key(checkpoint, data, split: str, indices=None, data_options: dict[str, Any] | None = None) -> str:
    """sha256 over (checkpoint identity, data source string + options, split, rows); a path source is identified
    as the decode cache does (location, size, mtime, file count), so changed files are not served stale."""
    from ..data.cache import source_identity
    from ..data.loading import is_builtin
    from ..models.io import file_sha256
    path = Path(data).expanduser()
    source = (str(data) if is_builtin(data) or not path.exists()
              else source_identity(path, {k: (data_options or {})[k] for k in sorted(data_options or {})}))
    if indices is None:
        rows = None
    elif isinstance(indices, (str, os.PathLike)):
        rows = "file-sha256:" + file_sha256(indices)
    else:
        rows = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()
    payload = {"format": FEATURE_CACHE_FORMAT, "checkpoint": checkpoint_key(checkpoint), "data": source,
               "options": data_options or {}, "split": split, "rows": rows}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> Path:
    from ..data.cache import cache_root
    return cache_root() / "probe-features"


def features(checkpoint, data, split: str = "test", indices=None, data_options: dict[str, Any] | None = None,
             cache_dir: str | os.PathLike[str] | None = None, device: str = "auto",
             batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(float32 n×d pooled features, int64 labels) of `data`'s `split` rows `indices` (all when None), from
    `r18lab.predict` (eval mode, stored preprocessing); cached as .npz under `cache_dir` keyed by `features_key`,
    so a second call does not run the model. checkpoint: a path or a LoadedModel (e.g. from `load_foreign`)."""
    from ..atomic import atomic_target
    from ..predict import predict
    key = features_key(checkpoint, data, split, indices, data_options)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{key[:40]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"][()]) == key:
                    return z["features"], z["labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a corrupt entry is recomputed and replaced
    preds = predict(checkpoint, data, split=split, indices=indices, device=device, batch_size=batch_size,
                    data_options=data_options)
    if preds.labels is None:
        raise DataError(f"{data} ({split}) has no labels; a probe needs labelled images")
    feats, labels = preds.features.astype(np.float32), preds.labels.astype(np.int64)
    try:
        with atomic_target(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=feats, labels=labels, indices=preds.indices, key=np.array(key))
    except OSError as e:
        raise R18Error(f"cannot write the feature cache {path}: {e.strerror or e}; pass --cache with a writable "
                       "folder") from None
    return feats, labels


def load_foreign(path: str | os.PathLike[str], arch: str, stem: str = "imagenet", image_size: int = 224,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, width: float = 1.0,
                 device: str = "cpu"):
    """A torchvision/timm-layout safetensors file without r18lab metadata as a LoadedModel: `create_model(arch,
    num_classes=rows of fc.weight, stem, width)` (heads=[] without fc), loaded strictly (BN's
    num_batches_tracked may be absent), with Preprocessing.of(mean, std, (3, image_size, image_size))."""
    import torch

    from ..models.classifier import create_model
    from ..models.io import LoadedModel, Preprocessing, file_sha256, read_tensors, state_mismatch
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give the path of a .safetensors file")
    tensors, _ = read_tensors(path)
    fc = tensors.get("fc.weight")
    heads = ["main"] if fc is not None else []
    num_classes = int(fc.shape[0]) if fc is not None else 1
    model = create_model(arch, num_classes=num_classes, stem=stem, width=width, heads=heads)  # unknown arch: one line
    own = model.state_dict()
    detail = state_mismatch(own, tensors, optional=[k for k in own if k.endswith("num_batches_tracked")])
    if detail:
        raise CheckpointError(f"{path} does not fit {arch} (stem {stem}, width {width}): {detail}; give the "
                              "architecture the weights were trained with (torchvision parameter names)")
    full = {k: tensors.get(k, own[k]) for k in own}
    with torch.no_grad():
        model.load_state_dict(full, strict=True)
    spec = {"name": arch, "num_classes": num_classes, "stem": stem, "width": width, "heads": heads}
    pre = Preprocessing.of(mean, std, (3, image_size, image_size))
    return LoadedModel(model.to(device), spec, pre, f"sha256:{file_sha256(path)}", path)


__all__ = ["C_GRID", "FOLDS", "SVM", "check_c_grid", "checkpoint_key", "cv_folds", "features", "features_key",
           "fewshot_episodes", "fewshot_probe", "full_probe", "l2_normalize", "linear_svm_probe", "load_foreign",
           "select_classes", "stable_seed", "svm_header", "t_interval"]
