"""tables: summarize / compare values, Markdown and CSV output, atomic writes."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from r18lab.errors import DataError
from r18lab.atomic import atomic_target
from r18lab.results.tables import compare, format_pm, summarize, to_csv, to_markdown


def _rows(cycle: int, method: str, accs: list[float], seeds: list[int] | None = None) -> list[dict]:
    seeds = list(range(len(accs))) if seeds is None else seeds
    return [{"cycle": cycle, "method": method, "seed": s, "acc": a} for s, a in zip(seeds, accs)]


def test_format_pm() -> None:
    assert format_pm(53.7149, 1.2) == "53.71 ± 1.20"
    assert format_pm(0.53714, 0.012, ".3f") == "0.537 ± 0.012"


def test_summarize_groups_in_first_seen_order() -> None:
    rows = (_rows(1, "ce", [60.0, 62.0]) + _rows(0, "ce", [52.51, 53.71, 54.91])
            + _rows(1, "ours", [61.0]) + _rows(0, "ours", [50.0, 51.0]))
    out = summarize(rows)
    assert [(r["cycle"], r["method"], r["n"]) for r in out] == [(1, "ce", 2), (0, "ce", 3), (1, "ours", 1), (0, "ours", 2)]
    assert out[0]["mean"] == 61.0 and out[0]["std"] == pytest.approx(math.sqrt(2))
    assert out[1]["mean"] == pytest.approx(53.71) and out[1]["std"] == pytest.approx(1.2)
    assert out[1]["mean ± std"] == "53.71 ± 1.20"
    assert out[2]["std"] == 0.0 and out[2]["mean ± std"] == "61.00 ± 0.00"
    assert set(out[0]) == {"cycle", "method", "n", "mean", "std", "mean ± std"}


def test_summarize_custom_keys() -> None:
    rows = [{"m": "a", "f1": 0.5}, {"m": "a", "f1": 0.7}, {"m": "b", "f1": 0.1}]
    out = summarize(rows, by="m", value="f1", floatfmt=".3f")
    assert [(r["m"], r["n"], r["mean ± std"]) for r in out] == [("a", 2, "0.600 ± 0.141"), ("b", 1, "0.100 ± 0.000")]


def test_summarize_reports_bad_rows() -> None:
    with pytest.raises(DataError, match="row 1 has no 'acc'"):
        summarize([{"cycle": 0, "method": "a", "acc": 1.0}, {"cycle": 0, "method": "a"}])
    with pytest.raises(DataError, match="not a number"):
        summarize([{"cycle": 0, "method": "a", "acc": "high"}])
    with pytest.raises(DataError, match="not a number"):
        summarize([{"cycle": 0, "method": "a", "acc": None}])
    with pytest.raises(DataError, match="not a number"):
        summarize([{"cycle": 0, "method": "a", "acc": True}])
    assert summarize([{"cycle": 0, "method": "a", "acc": np.float32(0.5)}])[0]["mean"] == 0.5


def test_compare_against_first_method() -> None:
    rows = (_rows(0, "ce", [50.0, 52.0, 54.0]) + _rows(0, "ours", [51.0, 54.0, 55.0, 60.0])
            + _rows(1, "ce", [60.0, 61.0]) + _rows(1, "ours", [62.0, 64.0]) + _rows(1, "mix", [59.0, 60.0]))
    out = compare(rows)
    assert [(r["cycle"], r["method"], r["baseline"]) for r in out] == [(0, "ours", "ce"), (1, "ours", "ce"), (1, "mix", "ce")]
    r = out[0]
    # paired on seeds 0..2: d = [1, 2, 1], mean 4/3; seed 3 of 'ours' has no partner
    assert (r["n"], r["n_base"], r["n_pairs"]) == (4, 3, 3)
    assert r["mean"] == 55.0 and r["base_mean"] == 52.0
    assert r["diff"] == pytest.approx(4 / 3)
    ref = sps.ttest_rel([51.0, 54.0, 55.0], [50.0, 52.0, 54.0])
    ci = ref.confidence_interval(0.95)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["p_paired"] == pytest.approx(ref.pvalue)
    # Welch uses every run, the unpaired one included
    assert r["p_welch"] == pytest.approx(sps.ttest_ind([51.0, 54.0, 55.0, 60.0], [50.0, 52.0, 54.0], equal_var=False).pvalue)
    # cycle 1 'mix': d = [-1, -1] is constant -> collapsed CI, p = 0
    mix = out[2]
    assert (mix["diff"], mix["ci_low"], mix["ci_high"], mix["p_paired"]) == (-1.0, -1.0, -1.0, 0.0)


def test_compare_explicit_baseline_and_pair_key() -> None:
    rows = [{"cycle": 0, "method": m, "run": k, "acc": a}
            for m, accs in (("a", [1.0, 2.0, 4.0]), ("b", [2.0, 2.0, 2.0])) for k, a in zip("xyz", accs)]
    out = compare(rows, baseline_method="b", pair_key="run")
    assert len(out) == 1 and out[0]["method"] == "a" and out[0]["baseline"] == "b"
    assert out[0]["diff"] == pytest.approx(1 / 3)  # d = [-1, 0, 2]


def test_compare_cycle_without_baseline_gives_nan_row() -> None:
    out = compare(_rows(0, "ce", [1.0, 2.0]) + _rows(0, "x", [2.0, 3.0]) + _rows(1, "x", [5.0, 6.0]))
    last = out[-1]
    assert (last["cycle"], last["n_base"], last["n_pairs"]) == (1, 0, 0)
    assert all(math.isnan(last[k]) for k in ("diff", "ci_low", "ci_high", "p_paired", "p_welch", "base_mean"))


def test_compare_errors() -> None:
    rows = _rows(0, "ce", [1.0, 2.0]) + _rows(0, "x", [1.0, 2.0])
    with pytest.raises(DataError, match="baseline method 'nope' has no rows"):
        compare(rows, baseline_method="nope")
    with pytest.raises(DataError, match="seed=0 at cycle=0"):
        compare(rows + _rows(0, "x", [3.0]))
    assert compare([]) == []


def test_to_markdown_exact() -> None:
    table = [{"method": "ce", "n": 3, "mean": 53.714, "note": "a|b", "p": None},
             {"method": "ours", "n": np.int64(10), "mean": float("nan"), "note": "", "p": np.float32(0.01234)}]
    md = to_markdown(table, floatfmt={"p": ".3g"})
    assert md == (
        "| method |   n |  mean | note |      p |\n"
        "| ------ | --: | ----: | ---- | -----: |\n"
        "| ce     |   3 | 53.71 | a\\|b |        |\n"
        "| ours   |  10 |   nan |      | 0.0123 |\n"
    )
    assert to_markdown(table, columns=["n", "method"], floatfmt=".1f").splitlines()[2] == "|   3 | ce     |"
    assert to_markdown([]) == ""


def test_to_csv_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "out" / "table.csv"
    path.parent.mkdir()
    path.write_text("old\n")
    table = [{"cycle": 0, "method": "ce", "mean": 1 / 3, "mean ± std": "0.33 ± 0.01"},
             {"cycle": 1, "method": "x,y", "mean": None}]
    assert to_csv(table, path) == path
    with open(path, newline="", encoding="utf-8") as fh:
        got = list(csv.reader(fh))
    assert got == [["cycle", "method", "mean", "mean ± std"],
                   ["0", "ce", repr(1 / 3), "0.33 ± 0.01"],
                   ["1", "x,y", "", ""]]
    assert os.listdir(path.parent) == ["table.csv"]  # no temp file left behind
    to_csv(table, path, columns=["method"])
    assert path.read_text(encoding="utf-8") == 'method\nce\n"x,y"\n'


def test_atomic_target_keeps_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_target(path) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["t.csv"]
