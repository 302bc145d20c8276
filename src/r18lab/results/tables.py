"""Result tables: per-group mean ± std, paired comparisons against a baseline, Markdown and CSV output.

Input rows are flat dicts, one per run, e.g. {"cycle": 3, "method": "ce", "seed": 0, "acc": 53.7}.
Output rows are flat dicts too, so they feed straight into `to_markdown` / `to_csv`.
"""
from __future__ import annotations

import csv
import io
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..atomic import atomic_write_text
from .stats import mean_std, paired_t, welch_t

Row = Mapping[str, Any]
PM = "mean ± std"


def format_pm(mean: float, std: float, floatfmt: str = ".2f") -> str:
    """'mean ± std' with both numbers in `floatfmt`, e.g. '53.71 ± 1.20'."""
    return f"{format(mean, floatfmt)} ± {format(std, floatfmt)}"


def summarize(
    rows: Iterable[Row],
    by: str | Sequence[str] = ("cycle", "method"),
    value: str = "acc",
    floatfmt: str = ".2f",
) -> list[dict[str, Any]]:
    """One row per distinct `by` tuple (first-seen order): the `by` keys, n, mean, std (ddof=1), 'mean ± std'."""
    keys = _keys(by)
    groups: dict[tuple[Any, ...], list[float]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_group_of(row, keys, i), []).append(_number(row, value, i))
    out = []
    for group, values in groups.items():
        mean, std = mean_std(values)
        out.append({**dict(zip(keys, group)), "n": len(values), "mean": mean, "std": std,
                    PM: format_pm(mean, std, floatfmt)})
    return out


def summarize_per_class(
    rows: Iterable[Row],
    by: str | Sequence[str] = ("labels", "method"),
    value: str = "per_class_acc",
    classes: str = "classes",
) -> list[dict[str, Any]]:
    """One row per (`by` group, class): the group keys, class, n (runs with an accuracy for it), mean and std
    (ddof=1) over the runs of the class's accuracy. Each input row holds a list `value` (per-class accuracy, None
    for a class without test images) and optionally the class names `classes`; rows without `value` are skipped."""
    keys = _keys(by)
    groups: dict[tuple[Any, ...], dict[str, list[float]]] = {}
    for i, row in enumerate(rows):
        accs = row.get(value)
        if not accs:
            continue
        names = row.get(classes) or [str(j) for j in range(len(accs))]
        per = groups.setdefault(_group_of(row, keys, i), {})
        for name, a in zip(names, accs):
            lst = per.setdefault(str(name), [])
            if a is not None:
                lst.append(float(a))
    out = []
    for group, per in groups.items():
        for name, values in per.items():
            mean, std = mean_std(values) if values else (float("nan"), float("nan"))
            out.append({**dict(zip(keys, group)), "class": name, "n": len(values), "mean": mean, "std": std})
    return out


def worst_classes(per_class: Sequence[Row], by: str | Sequence[str], k: int = 3) -> list[dict[str, Any]]:
    """Per `by` group of `summarize_per_class` rows: the k classes of lowest mean accuracy ('name mean%'), and how
    many classes are at 0 % in every run."""
    keys = _keys(by)
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for i, r in enumerate(per_class):
        groups.setdefault(_group_of(r, keys, i), []).append(r)
    out = []
    for group, rs in groups.items():
        scored = sorted((r for r in rs if r["n"]), key=lambda r: r["mean"])
        out.append({**dict(zip(keys, group)), "classes": len(rs),
                    "at 0 %": sum(1 for r in scored if r["mean"] == 0.0),
                    f"worst {k}": ", ".join(f"{r['class']} {r['mean']:.1f}" for r in scored[:k])})
    return out


def compare(
    rows: Iterable[Row],
    baseline_method: str | None = None,
    pair_key: str = "seed",
    *,
    group: str | Sequence[str] = ("cycle",),
    method_key: str = "method",
    value: str = "acc",
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Per `group` (e.g. cycle) and method, `method - baseline`: paired diff with CI, paired p, Welch p.

    The baseline defaults to the first method seen. Runs are paired on `pair_key` (e.g. the
    seed); unpaired runs still count in the Welch test, which uses all runs of both methods.
    Output keys: the group keys, method, baseline, n, n_base, n_pairs, mean, base_mean,
    diff, ci_low, ci_high, p_paired, p_welch (nan where undefined, e.g. no baseline runs).
    """
    gkeys = _keys(group)
    table: dict[tuple[Any, ...], dict[Any, dict[Any, float]]] = {}
    method_order: dict[Any, None] = {}
    for i, row in enumerate(rows):
        g = _group_of(row, gkeys, i)
        method = _get(row, method_key, i)
        pair = _get(row, pair_key, i)
        method_order.setdefault(method, None)
        per_pair = table.setdefault(g, {}).setdefault(method, {})
        if pair in per_pair:
            where = ", ".join(f"{k}={v!r}" for k, v in zip(gkeys, g))
            raise DataError(
                f"two runs of {method_key}={method!r} with {pair_key}={pair!r} at {where}; "
                f"drop the duplicate or pair on another key"
            )
        per_pair[pair] = _number(row, value, i)
    if not method_order:
        return []
    baseline = next(iter(method_order)) if baseline_method is None else baseline_method
    if baseline not in method_order:
        raise DataError(
            f"baseline {method_key} {baseline!r} has no rows; choose one of: "
            + ", ".join(repr(m) for m in method_order)
        )
    out = []
    for g, methods in table.items():
        base = methods.get(baseline, {})
        for method in method_order:
            if method == baseline or method not in methods:
                continue
            cur = methods[method]
            common = [p for p in cur if p in base]
            diff, lo, hi, _, p_paired = paired_t([cur[p] for p in common], [base[p] for p in common], confidence)
            _, _, p_welch = welch_t(list(cur.values()), list(base.values()))
            out.append({
                **dict(zip(gkeys, g)),
                method_key: method,
                "baseline": baseline,
                "n": len(cur),
                "n_base": len(base),
                "n_pairs": len(common),
                "mean": mean_std(list(cur.values()))[0],
                "base_mean": mean_std(list(base.values()))[0],
                "diff": diff,
                "ci_low": lo,
                "ci_high": hi,
                "p_paired": p_paired,
                "p_welch": p_welch,
            })
    return out


def to_markdown(
    table_rows: Sequence[Row],
    columns: Sequence[str] | None = None,
    floatfmt: str | Mapping[str, str] = ".2f",
) -> str:
    """GitHub pipe table of `columns` (default: all keys, first-seen order); numeric columns right-aligned.

    `floatfmt` is one format spec for every float, or a per-column mapping (others get '.2f').
    """
    cols = list(columns) if columns is not None else _all_keys(table_rows)
    if not cols:
        return ""
    cells = [[_cell(row.get(c), _fmt_for(floatfmt, c)) for c in cols] for row in table_rows]
    numeric = [_is_numeric_column(table_rows, c) for c in cols]
    headers = [_escape(c) for c in cols]
    widths = [max([len(h), 3] + [len(r[j]) for r in cells]) for j, h in enumerate(headers)]

    def line(parts: Sequence[str]) -> str:
        padded = [p.rjust(w) if num else p.ljust(w) for p, w, num in zip(parts, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if num else "-" * w for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(headers), rule] + [line(r) for r in cells]) + "\n"


def to_csv(
    table_rows: Sequence[Row], path: str | os.PathLike[str], columns: Sequence[str] | None = None
) -> Path:
    """Write rows as UTF-8 CSV (header = `columns` or all keys; floats at full precision) atomically."""
    cols = list(columns) if columns is not None else _all_keys(table_rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in table_rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    return atomic_write_text(path, buf.getvalue())


# -- helpers ------------------------------------------------------------------------------


def _keys(by: str | Sequence[str]) -> tuple[str, ...]:
    """A single key or a sequence of keys, as a tuple."""
    return (by,) if isinstance(by, str) else tuple(by)


def _get(row: Row, key: str, index: int) -> Any:
    """row[key], or a DataError naming the row and the keys it does have."""
    try:
        return row[key]
    except KeyError:
        raise DataError(
            f"row {index} has no {key!r} (keys: {', '.join(map(str, row))}); add it or choose another key"
        ) from None


def _group_of(row: Row, keys: tuple[str, ...], index: int) -> tuple[Any, ...]:
    """The tuple of `keys` values of `row`."""
    return tuple(_get(row, k, index) for k in keys)


def _number(row: Row, key: str, index: int) -> float:
    """row[key] as a float; DataError if it is missing or not a number."""
    v = _get(row, key, index)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise DataError(f"row {index} has {key}={v!r}, not a number; fix or drop that row")
    return float(v)


def _all_keys(rows: Iterable[Row]) -> list[str]:
    """Union of the rows' keys in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for k in row:
            seen.setdefault(k, None)
    return list(seen)


def _fmt_for(floatfmt: str | Mapping[str, str], column: str) -> str:
    """The float format for `column`."""
    return floatfmt if isinstance(floatfmt, str) else floatfmt.get(column, ".2f")


def _cell(v: Any, floatfmt: str) -> str:
    """One Markdown cell: floats via `floatfmt`, None empty, everything else str() with '|' escaped."""
    if v is None:
        return ""
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
        return format(float(v), floatfmt)
    return _escape(str(v))


def _escape(text: str) -> str:
    """Make text safe inside a pipe-table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _is_numeric_column(rows: Sequence[Row], column: str) -> bool:
    """True if every non-None value of `column` is a real number (not bool) and there is at least one."""
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return bool(values) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
