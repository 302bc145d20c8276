"""Tasks: what the labels of a run mean. A task maps the source's (train, test) datasets to the ones a run learns —
the classes as they are, a two-class grouping (CIFAR2), or the sign of an NTK eigenvector — and may fix which
points each split uses. Each is looked up by name in TASKS from `data.task`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import TASKS
from .dataset import Dataset


@dataclass
class Task:
    """The relabelled splits; `train_points` / `test_points` (indices into them) when the task fixes the points."""

    train: Dataset
    test: Dataset
    train_points: np.ndarray | None = None
    test_points: np.ndarray | None = None
    #: when the task drops images (a class subset): the source row of each kept train image, ascending; index
    #: files (`data.indices`) still count rows of the source's split and are mapped through it
    train_source: np.ndarray | None = None


@TASKS.register("classes")
def classes(train: Dataset, test: Dataset) -> Task:
    """The source's own classes, unchanged (the default)."""
    return Task(train, test)


def _class_index(value: Any, names: Sequence[str]) -> int:
    if isinstance(value, str) and value in names:
        return list(names).index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    raise ConfigError(f"task binary: {value!r} is not a class of the data (indices 0–{len(names) - 1} or names "
                      f"{', '.join(names)})")


def _relabel(ds: Dataset, labels: np.ndarray, names: list[str]) -> Dataset:
    return Dataset(ds.images, labels.astype(np.int64), names, ds.name)


@TASKS.register("binary")
def binary(train: Dataset, test: Dataset, positive: Sequence[int | str] = ()) -> Task:
    """Label 1 for the `positive` classes (indices or names), 0 for the others (e.g. CIFAR2, spec 002d §1)."""
    if isinstance(positive, (str, int)) or not positive:
        raise ConfigError("task binary needs positive: a non-empty list of classes, e.g. {name: binary, "
                          "positive: [0, 1, 2, 3, 4]}")
    pos = sorted({_class_index(p, train.classes) for p in positive})
    if len(pos) == len(train.classes):
        raise ConfigError("task binary: every class is positive, which leaves no negative class; list fewer classes")
    neg = [i for i in range(len(train.classes)) if i not in pos]
    names = ["+".join(train.classes[i] for i in neg), "+".join(train.classes[i] for i in pos)]
    return Task(*(_relabel(ds, np.isin(ds.labels, pos), names) for ds in (train, test)))


@TASKS.register("cifar2")
def cifar2(train: Dataset, test: Dataset) -> Task:
    """CIFAR2: airplane, automobile, bird, cat, deer (classes 0–4) → 1; dog, frog, horse, ship, truck → 0
    (`utils/misc.binarize_labels` of the linearised-networks code, spec 002d §1)."""
    if len(train.classes) != 10:
        raise ConfigError(f"task cifar2 groups CIFAR-10's ten classes, but the data has {len(train.classes)}; "
                          "use {name: binary, positive: [...]} for other data")
    return binary(train, test, positive=[0, 1, 2, 3, 4])


def _class_names(values: Any, names: Sequence[str], who: str) -> list[int]:
    if isinstance(values, (str, int)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"task {who} needs a non-empty list of classes, e.g. [bird, dog, horse]")
    out = []
    for v in values:
        if not (isinstance(v, str) and v in names):
            raise ConfigError(f"task {who}: {v!r} is not a class of the data; its classes are {', '.join(names)}")
        out.append(list(names).index(v))
    if len(set(out)) != len(out):
        raise ConfigError(f"task {who}: a class is listed twice in {list(values)}; list each once")
    return out


def _regroup(train: Dataset, test: Dataset, label_of: dict[int, int], names: list[str]) -> Task:
    """Keep the images of the classes in `label_of` (source label → new label), relabelled; rows in source order."""
    lookup = np.full(len(train.classes), -1, np.int64)
    for src, dst in label_of.items():
        lookup[src] = dst
    parts = []
    for ds in (train, test):
        rows = np.flatnonzero(lookup[ds.labels] >= 0)
        parts.append((Dataset(ds.images[rows], lookup[ds.labels[rows]], list(names), ds.name), rows))
    (tr, tr_rows), (te, _) = parts
    return Task(tr, te, train_source=None if len(tr_rows) == len(train) else tr_rows)


@TASKS.register("select")
def select(train: Dataset, test: Dataset, classes: Sequence[str] = ()) -> Task:
    """Only the images of `classes` (names), relabelled 0..k−1 in the order given (a class subset task, e.g. a
    t-split / d-split of paper 001 §3)."""
    chosen = _class_names(classes, train.classes, "select")
    return _regroup(train, test, {c: i for i, c in enumerate(chosen)}, [train.classes[c] for c in chosen])


@TASKS.register("group")
def group(train: Dataset, test: Dataset, groups: dict[str, Sequence[str]] | None = None) -> Task:
    """A label map: each new class is a group of source classes ({animal: [bird, cat, ...], ship: [ship]}), in the
    order written; classes in no group are dropped (e.g. the coarse generalist of spec 001 §5.1)."""
    if not isinstance(groups, dict) or not groups:
        raise ConfigError("task group needs groups: {new_class: [source classes]}, e.g. {name: group, groups: "
                          "{vehicle: [airplane, automobile], animal: [bird, cat]}}")
    label_of: dict[int, int] = {}
    for i, (name, members) in enumerate(groups.items()):
        for c in _class_names(members, train.classes, f"group ({name})"):
            if c in label_of:
                raise ConfigError(f"task group: class {train.classes[c]!r} is in two groups; put it in one")
            label_of[c] = i
    return _regroup(train, test, label_of, [str(k) for k in groups])


# -- eigenfunction tasks ----------------------------------------------------------------------------------------
EIGEN_KEYS = ("eigenvalues", "eigenvectors", "train_indices", "test_indices")


def read_eigenfunctions(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays `r18lab analyze ntk` writes to eigen.npz (no pickle): eigenvalues (k), eigenvectors (n × k, signs
    fixed), and the train / test indices of the n points (train points first)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"eigenfunction file {path} does not exist; write one with "
                          "`r18lab analyze ntk CKPT --data D --out DIR` (DIR/eigen.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in EIGEN_KEYS}
    except (KeyError, ValueError, OSError) as e:
        raise ConfigError(f"{path} is not an eigenfunction file from `r18lab analyze ntk` ({type(e).__name__}: {e}); "
                          "point data.task.file at its eigen.npz") from None
    n = len(arrays["train_indices"]) + len(arrays["test_indices"])
    if arrays["eigenvectors"].shape != (n, len(arrays["eigenvalues"])):
        raise ConfigError(f"{path} is inconsistent: eigenvectors {arrays['eigenvectors'].shape} for {n} points and "
                          f"{len(arrays['eigenvalues'])} eigenvalues; write it again with `r18lab analyze ntk`")
    return arrays


def save_eigenfunctions(path: str | Path, eigenvalues, eigenvectors, train_indices, test_indices) -> None:
    """Write eigen.npz atomically (read back by `read_eigenfunctions`): eigenvalues (k, descending), eigenvectors
    (n × k, float64, signs fixed), and the train / test indices of the n points, train points first."""
    import io
    from ..atomic import atomic_write_bytes
    arrays = {"eigenvalues": np.asarray(eigenvalues, np.float64), "eigenvectors": np.asarray(eigenvectors, np.float64),
              "train_indices": np.asarray(train_indices, np.int64), "test_indices": np.asarray(test_indices, np.int64)}
    n = len(arrays["train_indices"]) + len(arrays["test_indices"])
    if arrays["eigenvectors"].shape != (n, len(arrays["eigenvalues"])):
        raise ValueError(f"eigenvectors {arrays['eigenvectors'].shape} do not fit {n} points × "
                         f"{len(arrays['eigenvalues'])} eigenvalues")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def sign_labels(vector: np.ndarray) -> np.ndarray:
    """y = (sign(φ) + 1) // 2: 1 where φ > 0, 0 where φ ≤ 0 (`train_ntk.py`, spec 002d §1)."""
    return ((np.sign(vector) + 1) // 2).astype(np.int64)


@TASKS.register("eigenfunction")
def eigenfunction(train: Dataset, test: Dataset, file: str | None = None, index: int | None = None) -> Task:
    """Labels from the sign of the NTK eigenvector φ_index (0 = the largest eigenvalue, as the authors'
    `label_idx`) on the points it was computed on: its train points train, its test points test (spec 002d §1)."""
    if file is None or index is None:
        raise ConfigError("task eigenfunction needs file (an eigen.npz from `r18lab analyze ntk`) and index "
                          "(0 = largest eigenvalue), e.g. {name: eigenfunction, file: ntk/eigen.npz, index: 4}")
    arrays = read_eigenfunctions(file)
    k = arrays["eigenvectors"].shape[1]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < k:
        raise ConfigError(f"task eigenfunction: index {index!r} is beyond the {k} eigenvectors in {file} "
                          f"(0–{k - 1}); pick a smaller index or compute more with `r18lab analyze ntk --k`")
    tr, te = arrays["train_indices"].astype(np.int64), arrays["test_indices"].astype(np.int64)
    for name, idx, ds in (("train", tr, train), ("test", te, test)):
        if len(idx) and (idx.min() < 0 or idx.max() >= len(ds)):
            raise DataError(f"{file} indexes {name} image {int(idx.max())} but the data's {name} split has {len(ds)}; "
                            "use the data the kernel was computed on")
    labels = sign_labels(arrays["eigenvectors"][:, index])
    y_train, y_test = labels[:len(tr)], labels[len(tr):]
    if len(np.unique(y_train)) < 2:
        raise ConfigError(f"task eigenfunction: eigenvector {index} has one sign on every training point (a constant "
                          "task); pick another index")
    names = [f"phi{index}<=0", f"phi{index}>0"]
    full_train = np.zeros(len(train), np.int64)
    full_train[tr] = y_train
    full_test = np.zeros(len(test), np.int64)
    full_test[te] = y_test
    return Task(_relabel(train, full_train, names), _relabel(test, full_test, names), np.sort(tr), np.sort(te))


def apply_task(entry: Any, train: Dataset, test: Dataset) -> Task:
    """Run the task named by `data.task` (a name or {name, **options}) on the loaded splits."""
    from ..models.classifier import split_entry, _check_params
    name, params = split_entry(entry, "task")
    factory = TASKS.get(name)
    _check_params("task", name, factory, params, 2)
    return factory(train, test, **params)
