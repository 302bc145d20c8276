"""The consolidation reporting layer (specs/001-consolidation.md §2.4, §3.1 items 1–2, §5.2, §6 items 1–4): the
verdict rule reproduces the paper's counts from its own Table 4, the two-level bootstrap, the checks on synthetic
probes, and the written report."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from r18lab.errors import DataError
from r18lab.protocols import consolidate_claims as cc
from r18lab.protocols.consolidate_report import write_report
from r18lab.reference import p001_tables as paper

# spec §3.1 item 1: teacher → (RC−IN rel, RC−TD rel, TD−IN rel, RC−IN unrel, RC−TD unrel, TD−IN unrel)
SPEC_DELTAS = {
    "Cars196": (27.27, -0.18, 27.45, -0.81, 22.94, -23.76),
    "Resisc45": (1.98, 11.02, -9.04, -0.47, 25.17, -25.64),
    "iFood": (10.07, 3.37, 6.71, -2.11, 19.14, -21.25),
    "iFashion": (0.09, -1.55, 1.64, 0.25, 34.02, -33.77),
    "DTD": (0.45, 14.63, -14.18, -0.07, 20.20, -20.27),
    "Flowers": (0.95, 7.44, -6.49, 0.20, 15.12, -14.92),
    "Caltech256": (1.00, 12.30, -11.30, -0.08, 9.72, -9.79),
    "CUB": (11.64, 3.96, 7.68, -0.24, 13.39, -13.63),
    "Aircrafts": (24.55, -3.25, 27.80, -1.08, 28.24, -29.32),
    "iNaturalist": (6.89, 7.56, -0.67, -2.00, 15.87, -17.86),
}
SPEC_COUNTS = {"RC vs IN": ((6, 4, 0), (0, 10, 0)), "RC vs TD": ((7, 1, 2), (10, 0, 0)),
               "TD vs IN": ((5, 1, 4), (0, 0, 10))}


def _counts(rows):
    return {r["comparison"]: ((r["related better"], r["related similar"], r["related worse"]),
                              (r["unrelated better"], r["unrelated similar"], r["unrelated worse"])) for r in rows}


# -- the paper's own numbers -----------------------------------------------------------------------------------
def test_verdict_rule():
    assert cc.verdict(1.26, 1.25) == "better" and cc.verdict(-1.26, 1.25) == "worse"
    assert cc.verdict(1.25, 1.25) == "similar" and cc.verdict(-1.25, 1.25) == "similar"


def test_table4_gives_the_printed_counts_exactly():
    rows = cc.counts_table(cc.paper_deltas(), 1.25, 5.0)
    assert _counts(rows) == SPEC_COUNTS
    printed = {f"{a} vs {b}": v for (a, b), v in paper.PRINTED_COUNTS.items()}
    assert _counts(rows) == printed


def test_table4_per_teacher_deltas_match_the_spec():
    d = cc.paper_deltas()
    order = [("RC vs IN", "related"), ("RC vs TD", "related"), ("TD vs IN", "related"),
             ("RC vs IN", "unrelated"), ("RC vs TD", "unrelated"), ("TD vs IN", "unrelated")]
    for teacher, expected in SPEC_DELTAS.items():
        got = [d[c][teacher][part] for c, part in order]
        assert got == pytest.approx(expected, abs=0.005 + 1e-9), teacher


def test_tau_is_the_key_parameter():
    d = cc.paper_deltas()
    default = _counts(cc.counts_table(d, 1.25, 5.0))
    assert _counts(cc.counts_table(d, 0.0, 5.0))["RC vs IN"][0] == (10, 0, 0)
    assert _counts(cc.counts_table(d, 2.0, 5.0))["RC vs IN"][0] == (5, 5, 0)  # Resisc45's +1.98 turns similar
    assert _counts(cc.counts_table(d, 1.25, 2.0))["RC vs IN"][1] == (0, 9, 1)  # iFood's −2.11 turns worse
    assert _counts(cc.counts_table(d, 1.25, 10.0))["RC vs TD"][1] != default["RC vs TD"][1]


def test_table2_is_table4_rounded():
    rows = cc.table2_vs_table4()
    assert len(rows) == 18
    assert all(r["abs diff"] <= 0.05 + 1e-9 for r in rows)


def test_related_sets_and_reference_shape():
    assert paper.RELATED["iNaturalist"] == ("CUB", "Flowers")
    assert set(paper.unrelated_tasks("iFood")) == set(paper.TASKS) - {"iFood", "Food101"}
    t4 = paper.table4()
    assert len(t4) == 22 and t4["iFood RC"]["iFood"] == 38.85
    assert all(f"{t} {m}" in t4 for t in paper.TEACHERS for m in ("RC", "TD"))


# -- the bootstrap ------------------------------------------------------------------------------------------------
def test_bootstrap_constant_shift_is_exact():
    rng = np.random.default_rng(1)
    b = rng.normal(50, 5, size=(3, 40))
    d = cc.two_level_bootstrap(b + 2.5, b, n=500)
    assert d.mean == pytest.approx(2.5) and d.low == pytest.approx(2.5) and d.high == pytest.approx(2.5)
    assert d.per_seed == pytest.approx((2.5, 2.5, 2.5)) and d.signs == "+++"


def test_bootstrap_zero_mean_noise_contains_zero():
    rng = np.random.default_rng(2)
    d = cc.two_level_bootstrap(rng.normal(0, 3, size=(3, 50)), n=2000, seed=3)
    assert d.low < 0 < d.high


def test_bootstrap_one_seed_is_an_episode_bootstrap():
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 4.0, size=50)
    d = cc.two_level_bootstrap(x[None, :], n=4000, seed=0)
    assert len(d.per_seed) == 1 and d.mean == pytest.approx(x.mean())
    half = (d.high - d.low) / 2
    assert half == pytest.approx(1.96 * x.std(ddof=1) / np.sqrt(50), rel=0.15)


def test_bootstrap_broadcasts_a_single_run_and_counts_seed_spread():
    rng = np.random.default_rng(5)
    g = rng.normal(60, 4, size=(1, 50))
    offsets = np.array([[-3.0], [1.0], [5.0]])
    d = cc.two_level_bootstrap(g + offsets, g, n=2000)
    assert d.per_seed == pytest.approx((-3.0, 1.0, 5.0)) and d.signs == "−++"
    assert d.low < 1.0 < d.high and d.low < -2.0  # the seeds' spread widens the interval
    with pytest.raises(DataError):
        cc.two_level_bootstrap(np.zeros((3, 5)), np.zeros((2, 5)))


# -- synthetic probes ---------------------------------------------------------------------------------------------
SHIFTS = {  # model → (related, unrelated) shift from G, points
    "G": (0.0, 0.0), "T": (8.0, -20.0), "TD": (9.0, -15.0), "RC": (5.0, -0.5), "SL": (0.3, -0.2), "RC-1:3": (6.0, -3.0),
}


def synthetic(shifts=SHIFTS, seeds=(0, 1, 2), episodes=50, with_sl=True, upstream_t=90.0):
    rng = np.random.default_rng(0)
    base = {"related": 55 + rng.normal(0, 4, episodes), "unrelated": 75 + rng.normal(0, 4, episodes)}
    probes, up = [], []
    for model, (rel, unrel) in shifts.items():
        if model == "SL" and not with_sl:
            continue
        model_seeds = [None] if model in ("G", "T") else [0] if model in ("SL", "RC-1:3", "RC-3:1") else list(seeds)
        for s in model_seeds:
            for task, shift in (("related", rel), ("unrelated", unrel)):
                acc = base[task] + shift + rng.normal(0, 1.0, episodes)
                probes.append({"model": model, "seed": s, "task": task, "kind": "fewshot",
                               "accuracies": acc.tolist(), "episode_indices_hash": f"h-{task}"})
                probes.append({"model": model, "seed": s, "task": task, "kind": "full",
                               "accuracies": [float(base[task].mean() + shift + 10)],
                               "episode_indices_hash": f"full-{task}"})
            upstream = {"T": upstream_t, "TD": 88.0, "RC": 84.0, "RC-1:3": 86.0, "RC-3:1": 83.0}.get(model)
            fidelity = {"G": 80.0, "RC": 79.0, "SL": 80.5, "RC-1:3": 78.0}.get(model)
            up.append({"model": model, "seed": s, "upstream": upstream, "fidelity": fidelity})
    return probes, up


SETTINGS = {"tau_related": 1.25, "tau_unrelated": 5.0, "bootstrap_resamples": 1000, "bootstrap_seed": 0}


def _status(checks):
    return {c["id"]: c["status"] for c in checks}


def test_checks_hold_when_td_forgets_and_rc_preserves():
    probes, up = synthetic()
    checks = cc.evaluate_checks(probes, up, SETTINGS)
    assert _status(checks) == {**{k: "holds" for k in ("P1", "P2", "P3", "K1", "K2", "K3", "K5", "K12")},
                               "K4": "fails", "K9": "not run"}  # RC 5 < T 8 on related; no RC-3:1 run
    k1 = next(c for c in checks if c["id"] == "K1")
    assert k1["mean"] == pytest.approx(-15.0, abs=0.5) and k1["ci_high"] < 0 and k1["signs"] == "−−−"
    assert "−33.77" in k1["paper"].replace("-", "−")
    assert "iFood 74.4/72.8/68.6" in next(c for c in checks if c["id"] == "K5")["paper"]


def test_failed_premise_makes_k_checks_uninformative():
    shifts = {**SHIFTS, "T": (-1.0, -20.0)}  # the teacher does not beat G on related
    probes, up = synthetic(shifts)
    checks = cc.evaluate_checks(probes, up, SETTINGS)
    st = _status(checks)
    assert st["P1"] == "fails" and st["P2"] == "holds"
    assert all(st[k] == "uninformative" for k in ("K1", "K2", "K3", "K5", "K12"))
    assert next(c for c in checks if c["id"] == "K1")["rule_met"] is True  # the rule's outcome is kept
    assert "uninformative" in cc.premise_outcome(checks)


def test_checks_fail_and_not_run():
    shifts = {**SHIFTS, "RC": (5.0, -12.0)}  # RC forgets as well
    probes, up = synthetic(shifts, with_sl=False)
    st = _status(cc.evaluate_checks(probes, up, SETTINGS))
    assert st["K2"] == "fails" and st["K5"] == "fails" and st["K12"] == "not run" and st["K1"] == "holds"
    probes, up = synthetic(upstream_t=95.0)  # TD 88 < T 95 − 5: distillation did not converge
    st = _status(cc.evaluate_checks(probes, up, SETTINGS))
    assert st["P3"] == "fails" and st["K1"] == "uninformative"


def test_probes_must_share_episodes():
    probes, _ = synthetic()
    probes[0] = {**probes[0], "episode_indices_hash": "other"}
    with pytest.raises(DataError, match="same episodes"):
        cc.index_probes(probes)
    with pytest.raises(DataError, match="duplicate"):
        cc.index_probes(synthetic()[0] * 2)


def test_settings_from_mapping_or_object():
    s = cc.report_settings({"tau_rel": 2.0, "tau_unrel": 3.0, "resamples": 100, "bootstrap_seed": 7,
                            "related_tasks": "rel"})
    assert (s.tau_related, s.tau_unrelated, s.bootstrap_resamples, s.bootstrap_seed) == (2.0, 3.0, 100, 7)
    assert s.related_tasks == ("rel",) and cc.report_settings(None) == cc.ReportSettings()
    obj = SimpleNamespace(tau_related=1.0, tau_unrelated=None, bootstrap_resamples=300, scale="small")
    assert cc.report_settings(obj) == cc.ReportSettings(1.0, 5.0, 300, 0, ("related",), "small")


# -- the written report -------------------------------------------------------------------------------------------
def test_write_report(tmp_path):
    probes, up = synthetic()
    text = write_report(probes, up, SETTINGS, tmp_path / "out", "consolidation (tiny)")
    names = ("report.md", "table2.csv", "raw.csv", "counts.csv", "deltas.csv", "differences.csv", "checks.csv",
             "deltas.png", "upstream.png")
    for name in names:
        assert (tmp_path / "out" / name).is_file(), name
        assert str(tmp_path / "out" / name) in text
    assert (tmp_path / "out" / "report.md").read_text().rstrip() == text
    # this run: 3 seeds, RC vs TD related Δ ≈ −4 → worse; RC vs G unrelated ≈ −0.5 → similar
    run = [line for line in text.splitlines() if line.startswith("| RC vs TD")][0]
    assert [c.strip() for c in run.strip("|").split("|")][1:8] == ["0", "0", "3", "3", "0", "0", "3"]
    paper_rc_in = [line for line in text.splitlines() if line.startswith("| RC vs IN")][0]
    cells = [c.strip() for c in paper_rc_in.strip("|").split("|")]
    assert cells[1:8] == ["6", "4", "0", "0", "10", "0", "10"] and cells[-1] == "yes"
    assert "τ_related = 1.25" in text and "τ_unrelated = 5" in text
    assert "partly guaranteed" in text and "K1 is the informative part" in text
    assert "RC-1:3" in text and "| K12 " in text and "holds" in text
    assert "Premises: P1 holds, P2 holds, P3 holds" in text


def test_write_report_without_sl_or_teacher(tmp_path):
    probes, up = synthetic(with_sl=False)
    probes = [p for p in probes if p["model"] != "T"]
    up = [u for u in up if u["model"] != "T"]
    text = write_report(probes, up, {"scale": "small"}, tmp_path, "partial")
    assert "not run" in text and "partly guaranteed" not in text
    assert (tmp_path / "deltas.png").is_file()


def test_k9_loss_weight_order():
    """related 1:3 ≥ 1:1 ≥ 3:1 and the reverse on unrelated (spec §5.3)."""
    ordered = {**SHIFTS, "RC-3:1": (4.0, 0.5)}
    assert _status(cc.evaluate_checks(*synthetic(ordered), SETTINGS))["K9"] == "holds"
    swapped = {**SHIFTS, "RC-3:1": (7.0, 0.5)}  # the generalist-heavy student is best on related: order broken
    assert _status(cc.evaluate_checks(*synthetic(swapped), SETTINGS))["K9"] == "fails"
