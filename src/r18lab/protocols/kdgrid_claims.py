"""The claims check of the KD grid (specs/003-kd-residual.md §5, C1–C9): each claim's status — held, direction only,
not refuted, not held, not measured — and its evidence, computed from the grids, never typed in."""
from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..results.stats import paired_t
from .kdgrid_report import FamilyGrids, Grid, above_teacher, derived, kd_vs_nr, mean, per_seed_gain

NAN = float("nan")
HELD, NOT_HELD, NOT_MEASURED = "held", "not held", "not measured"
DIRECTION_ONLY = "direction only (CI spans 0)"  # the means agree with the claim, a paired 95 % CI does not exclude 0


def _level(variant: str) -> int:
    """Regularisation order of a variant (specs/003 §1.1): higher g or lower G ⇒ more regularised."""
    return int(variant[1:]) if variant[0] == "g" else -int(variant[1:])


def _trend_halves(fams: Iterable[FamilyGrids]) -> list[tuple[FamilyGrids, Grid, str, str]]:
    """(family, half, most regularised student, least regularised) for grouped halves with ≥ 2 students."""
    out = []
    for f in fams:
        for g in f.grids:
            ss = [s for s in g.students if s[0] in "gG"]
            if len(ss) >= 2:
                out.append((f, g, max(ss, key=_level), min(ss, key=_level)))
    return out


def _status(measured: bool, ok: bool) -> str:
    return NOT_MEASURED if not measured else HELD if ok else NOT_HELD


def _significant(status: str, pairs: Sequence[tuple[Mapping[int, float], Mapping[int, float]]]) -> tuple[str, str]:
    """Downgrade `held` to DIRECTION_ONLY when a cell with ≥ 2 paired seeds has a 95 % CI of a − b reaching 0."""
    tested = [(a, b) for a, b in pairs if len(set(a) & set(b)) >= 2]
    spans = 0
    for a, b in tested:
        seeds = sorted(set(a) & set(b))
        _, lo, _, _, _ = paired_t([a[k] for k in seeds], [b[k] for k in seeds])
        spans += not lo > 0
    note = f"; paired 95 % CI above 0 in {len(tested) - spans}/{len(tested)}" if tested else ""
    return (DIRECTION_ONLY if status == HELD and spans else status), note


def _c1(fams: Sequence[FamilyGrids]) -> tuple[str, str]:
    drops = [(g.family, d["student"], d["acc_drop"]) for f in fams for g in f.grids for d in derived(g)
             if not math.isnan(d["acc_drop"])]
    seeds = [(g.baseline[s][k] - g.nr[s][k]) for f in fams for g in f.grids for s in g.students
             for k in set(g.baseline.get(s, {})) & set(g.nr.get(s, {}))]
    pos = sum(x > 0 for _, _, x in drops)
    ev = (f"{pos}/{len(drops)} students with mean drop > 0"
          + (f" (min {min(x for *_, x in drops):+.2f}); per seed {sum(x > 0 for x in seeds)}/{len(seeds)}"
             if drops else ""))
    status, note = _significant(_status(bool(drops), pos == len(drops)),
                                [(g.baseline.get(s, {}), g.nr.get(s, {})) for f in fams for g in f.grids
                                 for s in g.students])
    return status, ev + note


def _family_drop(f: FamilyGrids) -> float:
    drops = [d["acc_drop"] for g in f.grids for d in derived(g) if not math.isnan(d["acc_drop"])]
    return statistics.fmean(drops) if drops else NAN


def _c2(fams: Sequence[FamilyGrids]) -> tuple[str, str]:
    groups: dict[str, list[tuple[int, str, float]]] = {}
    for f in fams:
        d = _family_drop(f)
        if f.depth is not None and f.depth_group and not math.isnan(d):
            groups.setdefault(f.depth_group, []).append((f.depth, f.family, d))
    groups = {k: sorted(v) for k, v in groups.items() if len({x[0] for x in v}) >= 2}
    ok = all(all(a[2] < b[2] for a, b in zip(v, v[1:])) for v in groups.values())
    ev = "; ".join(f"{k}: " + " → ".join(f"{name} (depth {dep}) {d:.2f}" for dep, name, d in v)
                   for k, v in groups.items()) or "no two families of one width at different depths"
    return _status(bool(groups), ok), "mean drop " + ev if groups else ev


def _c3(fams: Sequence[FamilyGrids]) -> tuple[str, str]:
    grids = [g for f in fams for g in f.grids]
    r = kd_vs_nr(grids)
    seeds = [v[k] - g.nr[s][k] for g in grids for (t, s), v in g.kd.items() for k in v if k in g.nr.get(s, {})]
    if not r["cells"]:
        return NOT_MEASURED, "no KD cell with an NR-baseline"
    fam, t, s = r["at"]
    ev = (f"{r['above']}/{r['cells']} cells KD > NR-baseline (smallest margin {r['min_margin']:+.2f}, {fam} "
          f"NR-{s} ← R-{t}); per seed {sum(x > 0 for x in seeds)}/{len(seeds)}")
    status, note = _significant(_status(True, r["above"] == r["cells"]),
                                [(v, g.nr.get(s, {})) for g in grids for (t, s), v in g.kd.items()])
    return status, ev + note


NOT_REFUTED = "not refuted (only a CI reaches 0)"  # mean gain < 0, but a paired 95 % CI of KD − R reaches 0


def _reaches(grid: Grid, row: dict[str, Any]) -> str:
    """Whether the distilled NR student reaches its R baseline: "mean" (mean gain ≥ 0), "ci" (mean gain < 0 but the
    best teacher's paired 95 % CI upper bound ≥ 0 with ≥ 2 seeds: specs/003 §6 T1's pass rule), or "no"."""
    if row["distil_gain"] >= -1e-9:
        return "mean"
    t, s = row["best_teacher"], row["student"]
    kd, base = grid.kd.get((t, s), {}), grid.baseline.get(s, {})
    seeds = sorted(set(kd) & set(base))
    if len(seeds) >= 2:
        _, _, hi, _, _ = paired_t([kd[k] for k in seeds], [base[k] for k in seeds])
        if not math.isnan(hi) and hi >= 0:
            return "ci"
    return "no"


def _c4(fams: Sequence[FamilyGrids]) -> tuple[str, str]:
    rows = [(g, d) for f in fams if f.depth_class == "shallow" for g in f.grids for d in derived(g)
            if not math.isnan(d["distil_gain"])]
    if not rows:
        return NOT_MEASURED, "no shallow family (depth ≤ 22) measured"
    how = [_reaches(g, d) for g, d in rows]
    mean, ci = how.count("mean"), how.count("ci")
    status = HELD if mean > len(rows) / 2 else NOT_REFUTED if mean + ci > len(rows) / 2 else NOT_HELD
    return status, (f"shallow families: {mean}/{len(rows)} students with mean gain ≥ 0; {ci} more only within a "
                    "paired 95 % CI of KD − R")


def _mean_rho(fams: Iterable[FamilyGrids]) -> float:
    rhos = [d["rho"] for f in fams for g in f.grids for d in derived(g) if not math.isnan(d["rho"])]
    return statistics.fmean(rhos) if rhos else NAN


def _c5(fams: Sequence[FamilyGrids]) -> tuple[str, str]:
    deep = [f for f in fams if f.depth_class == "deep"]
    shallow = [f for f in fams if f.depth_class == "shallow"]
    gains = [d["distil_gain"] for f in deep for g in f.grids for d in derived(g) if not math.isnan(d["distil_gain"])]
    rd, rs = _mean_rho(deep), _mean_rho(shallow)
    measured = bool(gains) and not math.isnan(rd) and not math.isnan(rs)
    if not measured:
        return NOT_MEASURED, "needs a deep (depth ≥ 40) and a shallow (≤ 22) family"
    neg = sum(x < 0 for x in gains)
    ev = f"deep families: {neg}/{len(gains)} gains < 0; mean ρ deep {rd:.2f} vs shallow {rs:.2f}"
    return _status(True, neg == len(gains) and rd < rs), ev


def _c6(fams: Sequence[FamilyGrids]) -> tuple[str, str]:
    counts = [(g, above_teacher(g)) for f in fams for g in f.grids]
    n, total = sum(c[0] for _, c in counts), sum(c[1] for _, c in counts)
    ev = "; ".join(f"{g.family}/{g.kind}: {a}/{b}" for g, (a, b) in counts if b) or "no teacher accuracy known"
    return _status(total > 0, n > 0), f"{n}/{total} cells KD student > its teacher ({ev})" if total else ev


def _trend(fams: Sequence[FamilyGrids], reverse: bool) -> tuple[str, str]:
    """C7 (reverse False: gain(most regularised) − gain(least) > 0, every seed too) / C8 (reverse True).
    The evidence carries the confound of specs/003 §5/§8.12: the R baseline itself moves with the grouping."""
    parts, ok, n = [], True, 0
    sign = -1 if reverse else 1
    for f, g, most, least in _trend_halves([f for f in fams if f.over_regularised == reverse]):
        dm = {d["student"]: d for d in derived(g)}
        diff = dm[most]["distil_gain"] - dm[least]["distil_gain"]
        if math.isnan(diff):
            continue
        a, b = per_seed_gain(g, most), per_seed_gain(g, least)
        seeds = [sign * (a[k] - b[k]) for k in sorted(set(a) & set(b))]
        ok &= sign * diff > 0 and all(x > 0 for x in seeds)
        n += 1
        d_base = dm[least]["baseline"] - dm[most]["baseline"]
        d_kd = diff - d_base  # best KD(NR-most) − best KD(NR-least)
        per_seed = f", per seed {sum(x > 0 for x in seeds)}/{len(seeds)} in the claimed direction" if seeds else ""
        parts.append(f"{g.family}: gain(NR-{most}) − gain(NR-{least}) {diff:+.2f}{per_seed}; confound: "
                     f"R({least}) − R({most}) {d_base:+.2f}, best KD(NR-{most}) − KD(NR-{least}) {d_kd:+.2f}")
    who = "over-regularised" if reverse else "not over-regularised"
    return _status(n > 0, ok), "; ".join(parts) or f"no {who} family with two students of one grouping type"


def _c9(fams: Sequence[FamilyGrids]) -> tuple[str, str]:
    parts, ok, n = [], True, 0
    for f, g, most, least in _trend_halves([f for f in fams if f.depth_class != "deep"]):
        dr = mean(g.baseline.get(most)) - mean(g.baseline.get(least))
        dn = mean(g.nr.get(most)) - mean(g.nr.get(least))
        if math.isnan(dr) or math.isnan(dn):
            continue
        ok &= dr < 0 < dn
        n += 1
        parts.append(f"{g.family}: R({most}) − R({least}) {dr:+.2f}, NR({most}) − NR({least}) {dn:+.2f}")
    return _status(n > 0, ok), "; ".join(parts) or "no non-deep family with two students of one grouping type"


#: id → (claim, test rule, check); the checks compute from the grids, nothing is hard-coded (specs/003 §5)
CLAIMS: dict[str, tuple[str, str, Callable[[Sequence[FamilyGrids]], tuple[str, str]]]] = {
    "C1": ("removing residual connections lowers accuracy", "mean Acc. drop > 0 for every student", _c1),
    "C2": ("the drop grows with depth (same width)", "mean drop rises with depth within each width group", _c2),
    "C3": ("KD from a residual teacher helps the plain student", "KD − NR-baseline > 0 in every cell", _c3),
    "C4": ("in shallow nets KD substitutes for residuals", "most shallow students: mean gain ≥ 0 (T1's rule, a CI reaching 0, is only 'not refuted')",
           _c4),
    "C5": ("in deep plain nets KD cannot recover the drop", "deep: every gain < 0 and mean ρ(deep) < ρ(shallow)",
           _c5),
    "C6": ("a student can beat its own teacher", "KD student − teacher > 0 in some cell", _c6),
    "C7": ("more regularised students gain more (TM hypothesis 2)",
           "gain(most regularised) − gain(least) > 0 (every seed too), families not over-regularised",
           lambda f: _trend(f, False)),
    "C8": ("over-regularised family: more representational power gains more (TM 3)",
           "gain(least regularised) − gain(most) > 0 in over-regularised families", lambda f: _trend(f, True)),
    "C9": ("without residuals the grouping trend reverses (not in deep nets)",
           "R(most reg.) − R(least) < 0 < NR(most reg.) − NR(least), non-deep families", _c9),
}


def claims(families: Sequence[FamilyGrids]) -> list[dict[str, str]]:
    """The claims check: per claim C1–C9, held / not held / not measured, with the computed evidence."""
    out = []
    for cid, (text, rule, check) in CLAIMS.items():
        status, evidence = check(families)
        out.append({"id": cid, "claim": text, "status": status, "test": rule, "evidence": evidence})
    return out
