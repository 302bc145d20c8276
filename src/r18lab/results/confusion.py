"""Per-class metrics from a confusion matrix: per-class accuracy (recall), balanced accuracy, tables.

A confusion matrix here is C×C counts, rows = true class, columns = predicted class (sklearn's convention).
Balanced accuracy is the mean per-class accuracy over the classes that have test images (sklearn's
`balanced_accuracy_score`); a class without test images has no accuracy (None) and is left out of the mean.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import DataError

Matrix = Sequence[Sequence[int]]

#: with more classes than this, console tables list the worst classes first and only this many
SHOW_CLASSES = 20


def _check(conf: Matrix) -> int:
    c = len(conf)
    if c == 0 or any(len(row) != c for row in conf):
        raise DataError(f"a confusion matrix must be square C×C counts, got {c} rows of lengths "
                        f"{sorted({len(r) for r in conf})}")
    return c


def class_support(conf: Matrix) -> list[int]:
    """Test images of each true class: the row sums."""
    _check(conf)
    return [int(sum(row)) for row in conf]


def per_class_accuracy(conf: Matrix) -> list[float | None]:
    """100·conf[c][c] / Σ_k conf[c][k] per class c (its recall, in %); None for a class without test images."""
    _check(conf)
    return [100.0 * row[c] / n if (n := sum(row)) else None for c, row in enumerate(conf)]


def balanced_accuracy(conf: Matrix) -> float:
    """Mean of the per-class accuracies (%) over the classes with test images; nan when there are none."""
    accs = [a for a in per_class_accuracy(conf) if a is not None]
    return sum(accs) / len(accs) if accs else math.nan


def accuracy(conf: Matrix) -> float:
    """100·trace / total (%): the plain accuracy the matrix implies; nan for an empty matrix."""
    c = _check(conf)
    total = sum(sum(row) for row in conf)
    return 100.0 * sum(conf[i][i] for i in range(c)) / total if total else math.nan


def class_names(classes: Sequence[str] | None, c: int) -> list[str]:
    """The names of c classes: `classes` when it has c entries, else '0' … 'c-1'."""
    return [str(x) for x in classes] if classes is not None and len(classes) == c else [str(i) for i in range(c)]


def per_class_rows(conf: Matrix, classes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per class in class order: class, n (test images), correct, acc (%, None without images),
    and the class it is most often mistaken for (`confused_with`, '' when never wrong)."""
    c = _check(conf)
    names = class_names(classes, c)
    rows = []
    for i, (row, acc) in enumerate(zip(conf, per_class_accuracy(conf))):
        wrong = [(row[j], j) for j in range(c) if j != i and row[j] > 0]
        top = max(wrong, key=lambda t: (t[0], -t[1])) if wrong else None
        rows.append({"class": names[i], "n": int(sum(row)), "correct": int(row[i]), "acc": acc,
                     "confused_with": f"{names[top[1]]} ({top[0]})" if top else ""})
    return rows


def worst_first(rows: list[dict[str, Any]], limit: int | None = SHOW_CLASSES) -> list[dict[str, Any]]:
    """Rows as they are when there are at most `limit`; else the `limit` lowest accuracies, worst first (classes
    without test images last)."""
    if limit is None or len(rows) <= limit:
        return rows
    ordered = sorted(rows, key=lambda r: (r["acc"] is None, r["acc"] if r["acc"] is not None else 0.0))
    return ordered[:limit]


def per_class_note(rows: list[dict[str, Any]], limit: int | None = SHOW_CLASSES) -> str:
    """One line under a per-class table: how many classes are shown and how many are at 0 %."""
    zero = sum(1 for r in rows if r["acc"] == 0.0)
    shown = f"the {limit} worst of {len(rows)} classes" if limit is not None and len(rows) > limit else \
        f"all {len(rows)} classes"
    return f"per-class accuracy: {shown}; {zero} class{'es' if zero != 1 else ''} at 0 %"


def head_report(conf: Matrix) -> dict[str, Any]:
    """What summaries and `eval --json` store for one head (the class names are stored once, beside): balanced
    accuracy, per-class accuracy (%, None without test images), support, and the matrix (rows true, columns
    predicted)."""
    _check(conf)
    return {"balanced_acc": balanced_accuracy(conf), "per_class_acc": per_class_accuracy(conf),
            "support": class_support(conf), "confusion": [[int(v) for v in row] for row in conf]}


__all__ = ["SHOW_CLASSES", "accuracy", "balanced_accuracy", "class_names", "class_support", "head_report",
           "per_class_accuracy", "per_class_note", "per_class_rows", "worst_first"]
