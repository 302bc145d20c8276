"""The similarity protocol's report: per check, each student kind's measures (mean ± std over seeds), then each claim
as a paired difference from the independent student — per-image differences pooled over seeds, percentile-bootstrap
95 % interval — beside the paper's statement and number; the verdict is computed, never typed in."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..analysis.similarity import paired_bootstrap_diff
from ..results.stats import mean_std
from ..results.tables import format_pm, to_markdown
from ..train.checkpoint import atomic_write_text
from .similarity import _split_ref, student_key


def _items(scores: dict, key: str, measure: str) -> np.ndarray | None:
    sc = scores[key][measure]
    return None if sc["items"] is None else np.asarray(sc["items"], dtype=float) * sc["scale"]


def pooled_difference(scores: dict, a_keys: list[str], b_keys: list[str], measure: str) -> dict[str, Any]:
    """Δ = mean over seeds of value(a) − value(b); with per-item values, the per-item differences of each seed pair
    pooled and bootstrapped (95 %), else no interval."""
    diffs = [scores[a][measure]["value"] - scores[b][measure]["value"] for a, b in zip(a_keys, b_keys)]
    delta = float(np.mean(diffs))
    pairs = [(_items(scores, a, measure), _items(scores, b, measure)) for a, b in zip(a_keys, b_keys)]
    if any(x is None or y is None or len(x) != len(y) for x, y in pairs):
        return {"delta": delta, "low": math.nan, "high": math.nan, "per_seed": diffs}
    iv = paired_bootstrap_diff(np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs]))
    return {"delta": delta, "low": iv.low, "high": iv.high, "per_seed": diffs}


def verdict(d: dict[str, Any], expect: str) -> str:
    if math.isnan(d["delta"]):
        return "n/a"
    has_ci = not math.isnan(d["low"])
    if expect == "=":
        if not has_ci:
            return "no interval"
        return "held (no gap: the interval holds 0)" if d["low"] <= 0 <= d["high"] else "not held (a gap)"
    if d["delta"] <= 0:
        return "not held"
    if not has_ci:
        return "direction only (no interval)"
    return "held" if d["low"] > 0 else "direction only (the interval holds 0)"


def check_tables(protocol, name: str, payload: dict) -> tuple[list[dict], list[dict]]:
    check, seeds = protocol.settings.checks[name], protocol.settings.seeds
    scores = payload["scores"]
    refs = list(dict.fromkeys([check.baseline, *check.students, *check.contrast]))
    keys = {ref: [student_key(*_split_ref(ref), s) for s in seeds] for ref in refs}
    values = []
    for ref in refs:
        row: dict[str, Any] = {"student": ref}
        for m in check.measures:
            vals = [scores[k][m]["value"] for k in keys[ref]]
            row[m] = format_pm(*mean_std([v for v in vals if not math.isnan(v)]), ".3g") if not all(
                math.isnan(v) for v in vals) else "—"
        values.append(row)
    claims = []
    for ref in [r for r in check.students if r != check.baseline]:
        for m in check.measures:
            expect = check.expect.get(m, ">")
            d = pooled_difference(scores, keys[ref], keys[check.baseline], m)
            claims.append({"check": name, "claim": f"{m}: {ref} {'>' if expect == '>' else '≈'} {check.baseline}",
                           "Δ": d["delta"], "95% CI": _ci(d), "per seed": ", ".join(f"{v:+.3g}" for v in d["per_seed"]),
                           "verdict": verdict(d, expect), "paper": check.paper})
    if check.contrast:
        a, b = check.contrast
        for m in check.measures:
            d = pooled_difference(scores, keys[a], keys[b], m)
            claims.append({"check": name, "claim": f"{m}: {a} > {b} (Δ vs {check.baseline} larger)", "Δ": d["delta"],
                           "95% CI": _ci(d), "per seed": ", ".join(f"{v:+.3g}" for v in d["per_seed"]),
                           "verdict": verdict(d, ">"), "paper": check.paper})
    return values, claims


def _ci(d: dict) -> str:
    return "—" if math.isnan(d["low"]) else f"[{d['low']:.3g}, {d['high']:.3g}]"


def write_report(protocol, ctx, title: str) -> str:
    parts = [f"# {title}", ""]
    done = sum(1 for s in protocol.specs if s.run_id in ctx.done)
    parts += [f"{done} of {len(protocol.specs)} runs finished; {protocol.settings.images} test images, seeds "
              f"{protocol.settings.seeds}; differences are paired per image and pooled over seeds (95 % percentile "
              "bootstrap).", ""]
    all_claims = []
    for name, check in protocol.settings.checks.items():
        path = protocol.check_path(name)
        parts.append(f"## {name}: {check.statement or ', '.join(check.measures)}")
        parts.append("")
        if not path.is_file():
            parts += ["not analysed (a run it needs did not finish)", ""]
            continue
        payload = json.loads(path.read_text())
        values, claims = check_tables(protocol, name, payload)
        all_claims += claims
        extra = next(iter(payload["scores"].values()))
        eps = [v["extra"].get("eps") for v in extra.values() if isinstance(v.get("extra"), dict) and "eps" in v["extra"]]
        parts += [to_markdown(values), "", to_markdown(claims, ["claim", "Δ", "95% CI", "per seed", "verdict", "paper"],
                                                          floatfmt=".3g"), ""]
        parts.append("seconds: " + ", ".join(f"{m} {s:.0f}" for m, s in payload["seconds"].items())
                     + (f"; attack ε = {eps[0]:.4f}" if eps else ""))
        parts.append("")
    if all_claims:
        parts += ["## All claims", "", to_markdown(all_claims, ["check", "claim", "Δ", "95% CI", "verdict", "paper"],
                                                   floatfmt=".3g"), ""]
    text = "\n".join(parts)
    atomic_write_text(protocol.out / "report.md", text)
    if all_claims:
        plot_claims(all_claims, protocol.out / "claims.png")
    return text


def plot_claims(claims: list[dict], path) -> None:
    """One bar per claim: the paired difference Δ with its 95 % interval, zero marked (Fig. 2–6's comparison)."""
    from matplotlib.figure import Figure

    from ..results.plots import save_png
    rows = [c for c in claims if not math.isnan(c["Δ"])]
    if not rows:
        return
    lows = [float(c["95% CI"].strip("[]").split(",")[0]) if c["95% CI"] != "—" else c["Δ"] for c in rows]
    highs = [float(c["95% CI"].strip("[]").split(",")[1]) if c["95% CI"] != "—" else c["Δ"] for c in rows]
    fig = Figure(figsize=(7, 0.45 * len(rows) + 1.2))
    ax = fig.add_subplot()
    y = range(len(rows))
    ax.barh(list(y), [c["Δ"] for c in rows], color=["C2" if c["verdict"].startswith("held") else "C7" for c in rows])
    ax.errorbar([c["Δ"] for c in rows], list(y), xerr=[[c["Δ"] - lo for c, lo in zip(rows, lows)],
                                                      [hi - c["Δ"] for c, hi in zip(rows, highs)]],
                fmt="none", ecolor="k", capsize=3)
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_yticks(list(y), [f"{c['check']} {c['claim']}" for c in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference from the independent student (95 % CI); green: held")
    fig.tight_layout()
    save_png(fig, path)
