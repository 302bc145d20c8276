"""The KD grid report (specs/003-kd-residual.md §2.2, §3.2, §5, §7): grid halves shaped like paper 003's Tables 1–6
with their derived rows, our extras (recovery ratio, mean-over-teachers gain, student − teacher, paired tests over
seeds), the claims check, and the parameter/FLOP table. The maths are pure functions over `Grid`s, so the same code
reproduces the paper's printed rows from its own numbers; the writers produce markdown, CSV and heat-map PNGs."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..results.stats import mean_std, paired_t
from ..results.tables import format_pm, to_csv, to_markdown
from ..train.checkpoint import atomic_write_text

NAN = float("nan")
Values = Mapping[int, float]  # seed → accuracy (%)

HALF_TITLES = {"g": "constant-g students (the paper's left halves)",
               "G": "constant-G students (the paper's right halves)", "std": "standard-conv students"}


# -- the data -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """One grid half: KD accuracies per (teacher, student), R and NR baselines per student, teacher accuracies."""

    family: str
    kind: str  # the students' grouping kind: "g" (left halves), "G" (right halves), "std"
    teachers: tuple[str, ...]
    students: tuple[str, ...]
    kd: Mapping[tuple[str, str], Values]
    baseline: Mapping[str, Values]
    nr: Mapping[str, Values]
    teacher_acc: Mapping[str, Values] = field(default_factory=dict)


@dataclass(frozen=True)
class FamilyGrids:
    """A family's halves with what the claims need to know about it (specs/003 §5: shallow/deep, over-regularised)."""

    family: str
    grids: tuple[Grid, ...]
    depth: int | None = None
    depth_group: str | None = None  # families of one group differ only in depth (C2)
    over_regularised: bool = False

    @property
    def depth_class(self) -> str | None:
        return depth_class(self.depth)


def depth_class(depth: int | None) -> str | None:
    """shallow (≤ 22 layers: ResNet-18, WRN-16/22), deep (≥ 40: WRN-40, MobileNet-V2), else between (specs/003 §5)."""
    if depth is None:
        return None
    return "shallow" if depth <= 22 else "deep" if depth >= 40 else "between"


def grid_from_rows(family: str, kind: str, students: Sequence[str], teachers: Sequence[str],
                   rows: Iterable[Mapping[str, Any]], value: str = "acc") -> Grid:
    """A half from result rows (family, role ∈ teacher/R/NR/KD, student, teacher, seed, acc)."""
    kd: dict[tuple[str, str], dict[int, float]] = {}
    base: dict[str, dict[int, float]] = {}
    nr: dict[str, dict[int, float]] = {}
    tacc: dict[str, dict[int, float]] = {}
    for r in rows:
        v = r.get(value)
        if r["family"] != family or v is None:
            continue
        role, s, seed = r["role"], r["student"], int(r["seed"])
        if role == "KD" and s in students and r["teacher"] in teachers:
            kd.setdefault((r["teacher"], s), {})[seed] = float(v)
        elif role == "R" and s in students:
            base.setdefault(s, {})[seed] = float(v)
        elif role == "NR" and s in students:
            nr.setdefault(s, {})[seed] = float(v)
        elif role == "teacher" and s in teachers:
            tacc.setdefault(s, {})[seed] = float(v)
    return Grid(family, kind, tuple(teachers), tuple(students), kd, base, nr, tacc)


def grid_from_reference(half: Any, teacher_acc: Mapping[str, float]) -> Grid:
    """A printed half of paper 003 (reference.p003_accuracy.GridHalf) as a one-seed Grid."""
    kd = {(t, s): {0: half.kd[i][j]} for i, t in enumerate(half.teachers) for j, s in enumerate(half.students)}
    return Grid(half.family, half.students[0][0], tuple(half.teachers), tuple(half.students), kd,
                {s: {0: v} for s, v in zip(half.students, half.baseline)},
                {s: {0: v} for s, v in zip(half.students, half.nr_baseline)},
                {t: {0: teacher_acc[t]} for t in half.teachers if t in teacher_acc})


# -- derived rows (pure) --------------------------------------------------------------------------------------
def mean(values: Values | None) -> float:
    """Mean over seeds; nan when there is none."""
    return mean_std(list(values.values()))[0] if values else NAN


def acc_drop(r: float, nr: float) -> float:
    """Acc. drop = Acc(R-s, CE) − Acc(NR-s, CE) (paper 003 L26; specs/003 §2.2)."""
    return r - nr


def distil_gain(kd: Sequence[float], r: float) -> float:
    """Distil. gain = max over the half's teachers of Acc(NR-s ← R-t) − Acc(R-s, CE) (specs/003 §2.2, 48/48 printed)."""
    kd = [v for v in kd if not math.isnan(v)]
    return max(kd) - r if kd else NAN


def mean_gain(kd: Sequence[float], r: float) -> float:
    """Mean-over-teachers gain = mean_t Acc(NR-s ← R-t) − Acc(R-s) (ours; the max is optimistic, specs/003 §8.11)."""
    kd = [v for v in kd if not math.isnan(v)]
    return statistics.fmean(kd) - r if kd else NAN


def recovery_ratio(kd: float, r: float, nr: float) -> float:
    """ρ = (KD − NR)/(R − NR): the share of the drop KD recovers, ≥ 1 ⇔ fully (ours, specs/003 §2.2); nan if R = NR."""
    return (kd - nr) / (r - nr) if r != nr and not math.isnan(kd) else NAN


def column(grid: Grid, student: str) -> dict[str, float]:
    """Mean KD accuracy of `student` per teacher that taught it."""
    return {t: mean(grid.kd[(t, student)]) for t in grid.teachers if grid.kd.get((t, student))}


def derived(grid: Grid) -> list[dict[str, Any]]:
    """Per student: baseline, NR-baseline, Acc. drop, Distil. gain, best teacher, ρ, mean-over-teachers gain and ρ."""
    out = []
    for s in grid.students:
        r, nr, col = mean(grid.baseline.get(s)), mean(grid.nr.get(s)), column(grid, s)
        best = max(col, key=col.__getitem__) if col else None
        kd_mean = statistics.fmean(col.values()) if col else NAN
        out.append({"family": grid.family, "kind": grid.kind, "student": s, "baseline": r, "nr_baseline": nr,
                    "acc_drop": acc_drop(r, nr), "distil_gain": distil_gain(list(col.values()), r),
                    "best_teacher": best, "rho": recovery_ratio(col[best] if best else NAN, r, nr),
                    "mean_gain": mean_gain(list(col.values()), r), "rho_mean": recovery_ratio(kd_mean, r, nr)})
    return out


def student_minus_teacher(grid: Grid) -> dict[tuple[str, str], float]:
    """KD student − its teacher's accuracy, for each cell whose teacher accuracy is known (ours, specs/003 §2.2)."""
    return {(t, s): mean(v) - mean(grid.teacher_acc[t]) for (t, s), v in grid.kd.items()
            if grid.teacher_acc.get(t)}


def per_seed_gain(grid: Grid, student: str) -> dict[int, float]:
    """Distil. gain at each seed: max_t KD_t(seed) − R(seed), over the seeds that have both."""
    base = grid.baseline.get(student, {})
    out = {}
    for seed, r in base.items():
        kd = [grid.kd[(t, student)][seed] for t in grid.teachers if seed in grid.kd.get((t, student), {})]
        if kd:
            out[seed] = max(kd) - r
    return out


# -- the paper's summary facts (specs/003 §3.2) ----------------------------------------------------------------
def kd_vs_nr(grids: Iterable[Grid]) -> dict[str, Any]:
    """How many KD cells beat their NR-baseline (KD − NR > 0), and the smallest margin with where it is."""
    above, cells, low, at = 0, 0, math.inf, None
    for g in grids:
        for (t, s), v in g.kd.items():
            nr = mean(g.nr.get(s))
            if not v or math.isnan(nr):
                continue
            m = mean(v) - nr
            cells, above = cells + 1, above + (m > 0)
            if m < low:
                low, at = m, (g.family, t, s)
    return {"above": above, "cells": cells, "min_margin": low if cells else NAN, "at": at}


def gain_count(grids: Iterable[Grid], threshold: float) -> tuple[int, int]:
    """(students with Distil. gain ≥ threshold, students with a gain)."""
    gains = [d["distil_gain"] for g in grids for d in derived(g) if not math.isnan(d["distil_gain"])]
    return sum(x >= threshold - 1e-9 for x in gains), len(gains)


def above_teacher(grid: Grid) -> tuple[int, int]:
    """(cells whose KD student beats its teacher, cells whose teacher accuracy is known)."""
    diffs = student_minus_teacher(grid).values()
    return sum(d > 0 for d in diffs), len(diffs)


def rho_range(grids: Iterable[Grid]) -> tuple[float, float]:
    """(min, max) of the best-teacher recovery ratio ρ over the students of `grids`."""
    rhos = [d["rho"] for g in grids for d in derived(g) if not math.isnan(d["rho"])]
    return (min(rhos), max(rhos)) if rhos else (NAN, NAN)


# -- paired tests over seeds -----------------------------------------------------------------------------------
def paired_tests(grid: Grid, confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per cell NR-s ← R-t: paired t-test over seeds of KD − R-baseline and KD − NR-baseline (mean, CI, p)."""
    best = {d["student"]: d["best_teacher"] for d in derived(grid)}
    out = []
    for s in grid.students:
        for t in grid.teachers:
            kd = grid.kd.get((t, s))
            if not kd:
                continue
            for name, ref in (("KD − R", grid.baseline.get(s, {})), ("KD − NR", grid.nr.get(s, {}))):
                seeds = sorted(set(kd) & set(ref))
                diff, lo, hi, _, p = paired_t([kd[k] for k in seeds], [ref[k] for k in seeds], confidence)
                out.append({"family": grid.family, "student": f"NR-{s}", "teacher": f"R-{t}",
                            "best_teacher": t == best[s], "comparison": name, "n_pairs": len(seeds),
                            "diff": diff, "ci_low": lo, "ci_high": hi, "p_paired": p})
    return out


def near_chance(rows: Iterable[Mapping[str, Any]], margin: float = 5.0) -> list[str]:
    """Networks whose mean accuracy over seeds is within `margin` points of chance (100/classes): a check on them
    measures non-convergence, not the claim (specs/003 §6 T3)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["role"] != "teacher" and r.get("chance") is not None:
            key = (r["family"], r["role"], r["student"], r["teacher"], r["chance"])
            groups.setdefault(key, []).append(float(r["acc"]))
    out = []
    for (fam, role, s, t, chance), accs in groups.items():
        m = statistics.fmean(accs)
        if m < chance + margin:
            who = f"NR-{s} ← R-{t}" if role == "KD" else f"{role}-{s}"
            out.append(f"{fam} {who}: {m:.2f} % is within {margin:g} points of chance ({chance:.2f} %); "
                       "a check on it is dominated by non-convergence")
    return out


# -- formatting -----------------------------------------------------------------------------------------------
def _pm(values: Values | None) -> str:
    if not values:
        return "–"
    m, s = mean_std(list(values.values()))
    return format_pm(m, s) if len(values) > 1 else f"{m:.2f}"


def _num(x: float, fmt: str = "+.2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def grid_table(grid: Grid, best: Grid | None = None) -> list[dict[str, Any]]:
    """The half as printed by the paper (teacher rows × NR student columns, derived rows) plus our extra rows;
    `best`: the same half at each run's best epoch, for two more rows (specs/003 §8.3)."""
    cols = [f"NR-{s}" for s in grid.students]
    d = {r["student"]: r for r in derived(grid)}
    b = {r["student"]: r for r in derived(best)} if best is not None else {}
    head = "teacher ↓ · student →"
    rows = [{head: f"R-{t}", **{f"NR-{s}": _pm(grid.kd.get((t, s))) for s in grid.students},
             "teacher acc": _pm(grid.teacher_acc.get(t))} for t in grid.teachers]
    extra: list[tuple[str, Callable[[str], str]]] = [
        ("Baseline (R, CE)", lambda s: _pm(grid.baseline.get(s))),
        ("NR-baseline (NR, CE)", lambda s: _pm(grid.nr.get(s))),
        ("**Acc. drop**", lambda s: _num(d[s]["acc_drop"], ".2f")),
        ("**Distil. gain** (best teacher)", lambda s: _num(d[s]["distil_gain"])),
        ("best teacher", lambda s: f"R-{d[s]['best_teacher']}" if d[s]["best_teacher"] else "–"),
        ("ρ recovery, best teacher (ours)", lambda s: _num(d[s]["rho"], ".2f")),
        ("mean-over-teachers gain (ours)", lambda s: _num(d[s]["mean_gain"])),
        ("ρ, mean over teachers (ours)", lambda s: _num(d[s]["rho_mean"], ".2f")),
    ]
    if b:
        extra += [("Acc. drop, best epoch", lambda s: _num(b[s]["acc_drop"], ".2f")),
                  ("Distil. gain, best epoch", lambda s: _num(b[s]["distil_gain"]))]
    rows += [{head: name, **{f"NR-{s}": fn(s) for s in grid.students}, "teacher acc": ""} for name, fn in extra]
    return [{k: r[k] for k in [head, *cols, "teacher acc"]} for r in rows]


def minus_teacher_table(grid: Grid) -> list[dict[str, Any]]:
    """Per cell: KD student − teacher accuracy (blank where the teacher's accuracy is unknown)."""
    diff = student_minus_teacher(grid)
    return [{"teacher ↓ · student →": f"R-{t}", **{f"NR-{s}": _num(diff[(t, s)]) if (t, s) in diff else "–"
                                                 for s in grid.students}} for t in grid.teachers]


def long_rows(grid: Grid) -> list[dict[str, Any]]:
    """The half in long form for CSV: one row per (row label, student) with mean, std, n."""
    out = []

    def add(row: str, s: str, v: Values | None, teacher: str | None = None) -> None:
        if v:
            m, sd = mean_std(list(v.values()))
            out.append({"family": grid.family, "kind": grid.kind, "row": row, "teacher": teacher, "student": s,
                        "mean": m, "std": sd, "n": len(v)})

    for t in grid.teachers:
        for s in grid.students:
            add("KD", s, grid.kd.get((t, s)), t)
        add("teacher", t, grid.teacher_acc.get(t))
    for s in grid.students:
        add("Baseline", s, grid.baseline.get(s))
        add("NR-baseline", s, grid.nr.get(s))
    for d in derived(grid):
        for key in ("acc_drop", "distil_gain", "rho", "mean_gain", "rho_mean"):
            out.append({"family": grid.family, "kind": grid.kind, "row": key, "teacher": d["best_teacher"]
                        if key in ("distil_gain", "rho") else None, "student": d["student"], "mean": d[key],
                        "std": None, "n": None})
    return out


def heatmap(grids: Sequence[Grid], path: Path, title: str) -> Path:
    """One panel per half: mean KD accuracy per (teacher row, NR student column), annotated, with gain vs R."""
    import numpy as np
    from matplotlib.figure import Figure

    from ..results.plots import save_png

    fig = Figure(figsize=(4.2 * len(grids), 3.6), layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, g in zip(axes, grids):
        a = np.array([[mean(g.kd.get((t, s))) for s in g.students] for t in g.teachers], dtype=float)
        im = ax.imshow(np.ma.masked_invalid(a), cmap="viridis", aspect="auto")
        for i, t in enumerate(g.teachers):
            for j, s in enumerate(g.students):
                if not math.isnan(a[i, j]):
                    r = mean(g.baseline.get(s))
                    note = "" if math.isnan(r) else f"\n({a[i, j] - r:+.2f})"
                    light = im.norm(a[i, j]) > 0.6  # dark text on the yellow end of viridis
                    ax.text(j, i, f"{a[i, j]:.2f}{note}", ha="center", va="center", fontsize=7,
                            color="k" if light else "w")
        ax.set_xticks(range(len(g.students)), [f"NR-{s}" for s in g.students])
        ax.set_yticks(range(len(g.teachers)), [f"R-{t}" for t in g.teachers])
        ax.set_title(f"{g.family}: {HALF_TITLES.get(g.kind, g.kind)}", fontsize=8)
        fig.colorbar(im, ax=ax, label="KD accuracy (%) (vs R baseline)")
    fig.suptitle(title, fontsize=9)
    return save_png(fig, path)


# -- costs ----------------------------------------------------------------------------------------------------
def with_paper_costs(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """Add the paper's printed params/FLOPs (Tables 8/9) where `paper_key` is set, when reference.p003_costs
    exists (returns whether it did)."""
    try:
        from ..reference import p003_costs as pc  # written separately; optional here
    except ImportError:
        return rows, False
    out = []
    for r in rows:
        key = r.get("paper_key")
        pp, pf = (pc.PRINTED_PARAMS.get(key), pc.PRINTED_FLOPS.get(key)) if key else (None, None)
        out.append({**r, "paper params (M)": pp, "params match": pc.matches_printed(r["params"], pp) if pp else None,
                    "paper FLOPs (M)": pf, "FLOPs match": pc.matches_printed(r["flops"], pf) if pf else None})
    return out, True


# -- the report -----------------------------------------------------------------------------------------------
def settings_lines(meta: Mapping[str, Any]) -> list[str]:
    """The run conditions every table must state (specs/003 §7.6): scale, seeds, epochs, T, α, schedule, metric."""
    return [f"- {k}: {v}" for k, v in meta.items()]


def write_report(families: Sequence[FamilyGrids], rows: list[dict[str, Any]], costs: list[dict[str, Any]],
                 meta: Mapping[str, Any], out_dir: Path, title: str) -> str:
    """Write report.md, runs.csv, grid.csv, tests.csv, claims.csv, costs.csv and heatmap_<family>.png; return the
    markdown."""
    if not rows:
        return "no finished runs yet"
    md = [f"## {title}", "", *settings_lines(meta), ""]
    long, tests = [], []
    for f in families:
        grids = [g for g in f.grids if g.kd or g.baseline or g.nr]
        if not grids:
            continue
        md += [f"### {f.family}", ""]
        for g in grids:
            best = (grid_from_rows(g.family, g.kind, g.students, g.teachers, rows, "best_acc")
                    if any(r.get("best_acc") is not None for r in rows) else None)
            md += [f"#### {HALF_TITLES.get(g.kind, g.kind)}: final-epoch accuracy (%), mean ± std over seeds", "",
                   to_markdown(grid_table(g, best)), "KD student − teacher accuracy (points):", "",
                   to_markdown(minus_teacher_table(g))]
            long += long_rows(g)
            tests += paired_tests(g)
        png = heatmap(grids, out_dir / f"heatmap_{f.family}.png", f"{title}: {f.family}")
        md += [f"heat map: {png}", ""]
    with_pairs = [t for t in tests if t["n_pairs"] >= 2]
    if with_pairs:
        md += ["### Paired t-tests over seeds (95 % CI)", "",
               to_markdown(with_pairs, ["family", "student", "teacher", "best_teacher", "comparison", "n_pairs",
                                        "diff", "ci_low", "ci_high", "p_paired"], {"p_paired": ".4f"})]
    from .kdgrid_claims import claims

    table = claims(families)
    md += ["### Claims (specs/003 §5), from these runs", "",
           to_markdown(table, ["id", "claim", "status", "test", "evidence"])]
    warnings = near_chance(rows)
    md += [f"- warning: {w}" for w in warnings] + ([""] if warnings else [])
    costs, has_paper = with_paper_costs(costs)
    if costs:
        cols = ["family", "network", "params", "flops", "num_classes", "input"]
        paper = has_paper and any(r.get("paper_key") for r in costs)
        cols += ["paper params (M)", "params match", "paper FLOPs (M)", "FLOPs match"] if paper else []
        md += ["### Parameters and FLOPs (multiply–accumulates of conv + linear) of the models trained", "",
               to_markdown(costs, cols)]
        if not paper:
            md += ["(no paper column: " + ("none of these models is one of paper 003's Tables 8/9 (CIFAR-100 head, "
                                           "32×32, full width)" if has_paper else
                                           "r18lab.reference.p003_costs is not available") + ")", ""]
        to_csv(costs, out_dir / "costs.csv")
    to_csv(rows, out_dir / "runs.csv")
    to_csv(long, out_dir / "grid.csv")
    to_csv(tests, out_dir / "tests.csv")
    to_csv(table, out_dir / "claims.csv")
    text = "\n".join(md).rstrip() + "\n"
    atomic_write_text(out_dir / "report.md", text)
    return text.rstrip()
