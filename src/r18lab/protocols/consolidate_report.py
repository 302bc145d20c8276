"""The consolidation report (specs/001-consolidation.md §5.2, §6 outputs 1–4): the Table-2 view, the raw Table-4
shape, the counts/verdict table of this run beside the one recomputed from the paper's Table 4, the checks
P1–P3/K1–K12, and the Figure 3/7-style Δ plot — all computed from the probes and upstream accuracies the protocol
hands over, written atomically as markdown, CSV and PNG."""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..reference import p001_tables as paper
from ..results.stats import mean_std
from ..results.tables import to_csv, to_markdown
from .consolidate_claims import (COMPARISONS, GENERALIST, KNOWN_MODELS, NAN, PAPER_COMPARISONS, Index,
                                 ReportSettings, counts_table, delta_table, evaluate_checks, index_probes,
                                 mean_deltas, paired_difference, paper_deltas, premise_outcome, report_settings,
                                 seed_order, split_tasks, tasks_of, upstream_values, verdict)

KINDS = ("fewshot", "full")
KIND_TITLES = {"fewshot": "5-shot", "full": "full"}

TINY_NOTE = ("At tiny scale (spec §5.1, §7 item 14) the generalist G is ours, trained on 5 coarse labels, and the "
             "unrelated downstream classes are classes it was trained on: K2 (RC ≈ G on unrelated) is then partly "
             "guaranteed by distilling G's head, and K1 (TD forgets) is the informative part. G's \"animal\" class "
             "has 6× the images of each vehicle class (plain CE).")


def model_order(index: Index, upstream: Iterable[Mapping[str, Any]]) -> list[str]:
    """G, T, TD, RC, SL where present, then variants (e.g. RC-1:3) in first-seen order."""
    seen = list(dict.fromkeys([m for (m, _, _) in index] + [str(r["model"]) for r in upstream]))
    return [m for m in KNOWN_MODELS if m in seen] + [m for m in seen if m not in KNOWN_MODELS]


def _seed_label(seed: Any) -> str:
    return "single run" if seed is None else f"seed {seed}"


# -- Table-2 view (spec §6 item 1) --------------------------------------------------------------------------------
def table2_cells(index: Index, upstream: Sequence[Mapping[str, Any]], models: Sequence[str], tasks: Sequence[str],
                 settings: ReportSettings) -> list[dict[str, Any]]:
    """Long rows (model, measure, mean, std over seeds, 95 % CI of the mean by the two-level bootstrap where there
    are episodes, n_seeds, n_episodes) for upstream, fidelity and each task's 5-shot and full probe."""
    out = []
    for m in models:
        for key in ("upstream", "fidelity"):
            vals = upstream_values(upstream, m, key)
            if vals:
                mu, sd = mean_std(list(vals.values()))
                out.append({"model": m, "measure": key, "mean": mu, "std": sd, "ci_low": NAN, "ci_high": NAN,
                            "n_seeds": len(vals), "n_episodes": None})
        for kind in KINDS:
            for t in tasks:
                d = paired_difference(index, m, None, [t], kind, settings)
                if d is None:
                    continue
                mu, sd = mean_std(list(d.per_seed))
                episodic = d.n_episodes > 1
                out.append({"model": m, "measure": f"{t} {KIND_TITLES[kind]}", "mean": mu, "std": sd,
                            "ci_low": d.low if episodic else NAN, "ci_high": d.high if episodic else NAN,
                            "n_seeds": len(d.per_seed), "n_episodes": d.n_episodes})
    return out


def _cell(r: Mapping[str, Any]) -> str:
    text = f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["n_seeds"] > 1 else "")
    return text + ("" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]")


def table2_view(cells: Sequence[Mapping[str, Any]], models: Sequence[str]) -> list[dict[str, Any]]:
    """The Table-2 shape: one row per model, one column per measure, cells 'mean ± std over seeds [episode CI]'."""
    seen = list(dict.fromkeys(r["measure"] for r in cells))
    first = [m for m in ("upstream", "fidelity") if m in seen]
    measures = first + [m for m in seen if m not in first]
    by = {(r["model"], r["measure"]): r for r in cells}
    rows = []
    for m in models:
        seeds = max((r["n_seeds"] for r in cells if r["model"] == m), default=0)
        rows.append({"model": m, "seeds": seeds,
                     **{k: _cell(by[(m, k)]) if (m, k) in by else "–" for k in measures}})
    return rows


# -- raw table (spec §6 item 2) -----------------------------------------------------------------------------------
def seed_means(index: Index, model: str, task: str, kind: str) -> dict[Any, float]:
    """seed → mean accuracy over the episodes."""
    return {s: float(v.mean()) for s, v in index.get((model, task, kind), {}).items()}


def raw_rows(index: Index, models: Sequence[str], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Long rows (model, seed, task, kind, mean over episodes, n_episodes) for CSV."""
    return [{"model": m, "seed": s, "task": t, "kind": k, "mean": float(v.mean()), "n_episodes": v.size}
            for k in KINDS for m in models for t in tasks for s, v in index.get((m, t, k), {}).items()]


def raw_table(index: Index, models: Sequence[str], tasks: Sequence[str], kind: str) -> list[dict[str, Any]]:
    """Table 4's shape for one probe kind: a row per model (mean over seeds), then a row per seed of models with
    several; a column per task."""
    rows = []
    for m in models:
        per = {t: seed_means(index, m, t, kind) for t in tasks}
        if not any(per.values()):
            continue
        seeds = seed_order({s for v in per.values() for s in v})
        label = m if len(seeds) == 1 else f"{m} (mean of {len(seeds)} seeds)"
        rows.append({"representation": label,
                     **{t: statistics.fmean(v.values()) if v else None for t, v in per.items()}})
        if len(seeds) > 1:
            rows += [{"representation": f"{m} {_seed_label(s)}", **{t: per[t].get(s) for t in tasks}}
                     for s in seeds]
    return rows


# -- counts of this run (spec §5.2, §6 item 4) --------------------------------------------------------------------
def run_deltas(index: Index, tasks: Sequence[str], related: Sequence[str],
               kind: str = "fewshot") -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, float]]]:
    """(per comparison "a vs b" → seed unit → {related, unrelated} Δ, the same for the means over seeds), by
    `mean_deltas` on the seed-mean table; a single run (G, T) is compared with every seed of the other model."""
    table: dict[str, dict[str, float]] = {}
    seeds: dict[str, list[Any]] = {}
    for (m, t, k), per in index.items():
        if k != kind:
            continue
        for s, v in per.items():
            table.setdefault(f"{m}@{s}", {})[t] = float(v.mean())
        seeds[m] = seed_order(set(seeds.get(m, [])) | set(per))
    for m, ss in seeds.items():
        table[f"{m}@mean"] = {t: statistics.fmean(table[f"{m}@{s}"][t] for s in ss)
                              for t in tasks if all(t in table[f"{m}@{s}"] for s in ss)}
    per_unit, means = {}, {}
    for a, b in COMPARISONS:
        if a not in seeds or b not in seeds:
            continue
        sa, sb = seeds[a], seeds[b]
        units = ([s for s in sa if s in sb] if len(sa) > 1 and len(sb) > 1 else sa if len(sa) > 1 else
                 sb if len(sb) > 1 else sa)

        def row(m: str, ss: list[Any], unit: Any) -> str:
            return f"{m}@{ss[0]}" if len(ss) == 1 else f"{m}@{unit}"

        names = {_seed_label(u): u for u in units}
        name = f"{a} vs {b}"
        per_unit[name] = mean_deltas(table, {n: row(a, sa, u) for n, u in names.items()},
                                     {n: row(b, sb, u) for n, u in names.items()},
                                     {n: related for n in names}, tasks)
        means[name] = mean_deltas(table, {"mean": f"{a}@mean"}, {"mean": f"{b}@mean"}, {"mean": related},
                                  tasks)["mean"]
    return per_unit, means


def run_delta_view(per_unit: Mapping[str, Mapping[str, Mapping[str, float]]],
                   means: Mapping[str, Mapping[str, float]], settings: ReportSettings) -> list[dict[str, Any]]:
    """Δ and verdict per seed unit and for the mean over seeds, one column per comparison and task group."""
    rows = []
    units = list(dict.fromkeys(u for per in per_unit.values() for u in per))
    for unit, source in [(u, None) for u in units] + [("mean over seeds", means)]:
        row: dict[str, Any] = {"unit": unit}
        for part, tau in (("related", settings.tau_related), ("unrelated", settings.tau_unrelated)):
            for comparison, per in per_unit.items():
                a, b = comparison.split(" vs ")
                d = (source[comparison] if source is not None else per.get(unit, {})).get(part, NAN)
                row[f"{a} − {b} {part}"] = "–" if math.isnan(d) else f"{d:+.2f} {verdict(d, tau)}"
        rows.append(row)
    return rows


def paper_counts_view(settings: ReportSettings,
                      table: Mapping[str, Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
    """The counts recomputed from the paper's Table 4 with these τ's, beside the printed ones (001 L87–L89)."""
    rows = counts_table(paper_deltas(table), settings.tau_related, settings.tau_unrelated)
    for r, key in zip(rows, PAPER_COMPARISONS):
        rel, unrel = paper.PRINTED_COUNTS[key]
        printed = f"{'/'.join(map(str, rel))} · {'/'.join(map(str, unrel))}"
        ours = (f"{r['related better']}/{r['related similar']}/{r['related worse']} · "
                f"{r['unrelated better']}/{r['unrelated similar']}/{r['unrelated worse']}")
        r["printed (rel · unrel)"] = printed
        r["matches printed"] = "yes" if ours == printed else "no"
    return rows


# -- differences from G and the plots (spec §6 item 3) ------------------------------------------------------------
def differences_from_generalist(index: Index, models: Sequence[str], tasks: Sequence[str],
                                settings: ReportSettings, kind: str = "fewshot") -> list[dict[str, Any]]:
    """Per model ≠ G and task: model − G (paired by episode), 95 % two-level bootstrap CI, per-seed Δ."""
    out = []
    for m in models:
        if m == GENERALIST:
            continue
        for t in tasks:
            d = paired_difference(index, m, GENERALIST, [t], kind, settings)
            if d is not None:
                out.append({"model": m, "task": t, "kind": kind, "delta": d.mean, "ci_low": d.low,
                            "ci_high": d.high, "per_seed": ", ".join(f"{v:+.2f}" for v in d.per_seed),
                            "signs": d.signs, "n_seeds": len(d.per_seed), "n_episodes": d.n_episodes})
    return out


def deltas_figure(diffs: Sequence[Mapping[str, Any]], related: Sequence[str], title: str = ""):
    """Figure 3/7 style: Δ accuracy vs G (points) per task, tasks grouped related | unrelated, one bar per model with
    its 95 % CI as error bar and the per-seed Δ as dots."""
    from matplotlib.figure import Figure

    tasks = sorted(dict.fromkeys(r["task"] for r in diffs), key=lambda t: t not in related)
    models = list(dict.fromkeys(r["model"] for r in diffs))
    by = {(r["model"], r["task"]): r for r in diffs}
    fig = Figure(figsize=(1.2 + 1.1 * len(tasks) * max(len(models), 1) / 2, 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(models), 1)
    for j, m in enumerate(models):
        xs, ys, err, dots = [], [], [[], []], ([], [])
        for i, t in enumerate(tasks):
            r = by.get((m, t))
            if r is None:
                continue
            x = i + (j - (len(models) - 1) / 2) * width
            xs.append(x)
            ys.append(r["delta"])
            err[0].append(max(r["delta"] - r["ci_low"], 0.0))
            err[1].append(max(r["ci_high"] - r["delta"], 0.0))
            for v in (float(p) for p in r["per_seed"].split(", ")) if r["n_seeds"] > 1 else ():
                dots[0].append(x)
                dots[1].append(v)
        ax.bar(xs, ys, width * 0.9, yerr=err, capsize=3, label=m)
        ax.plot(*dots, "k.", markersize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    groups = ["related" if t in related else "unrelated" for t in tasks]
    ax.set_xticks(range(len(tasks)), [t if t == g else f"{t}\n({g})" for t, g in zip(tasks, groups)])
    ax.set_ylabel(f"Δ accuracy vs {GENERALIST} (points)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    return fig


def upstream_figure(cells: Sequence[Mapping[str, Any]], title: str = ""):
    """Upstream accuracy on the teacher's classes and fidelity to G's coarse labels per model (mean ± std)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    for ax, key, label in zip(fig.subplots(1, 2), ("upstream", "fidelity"),
                              ("upstream: teacher's classes (%)", "fidelity: G's coarse labels (%)")):
        rows = [r for r in cells if r["measure"] == key]
        ax.bar([r["model"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=3,
               color="tab:blue")
        for i, r in enumerate(rows):
            ax.annotate(f"{r['mean']:.1f}", (i, r["mean"]), ha="center", va="bottom", fontsize="small")
        lo = min((r["mean"] - r["std"] for r in rows), default=0.0)
        ax.set_ylim(max(0.0, lo - 10), 100)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


# -- the report -------------------------------------------------------------------------------------------------
def write_report(probes: Iterable[Mapping[str, Any]], upstream: Iterable[Mapping[str, Any]], settings: Any,
                 out_dir: Path, title: str, paper_rows: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """Write report.md, table2.csv, raw.csv, counts.csv, deltas.csv, differences.csv, checks.csv, deltas.png and
    upstream.png into `out_dir` (atomically) and return the markdown; `paper_rows` replaces the stored Table 4
    ({row key: {task: %}}, keys as reference.p001_tables.table4()) for the paper's counts."""
    from ..results.plots import save_png

    probes, upstream = list(probes), list(upstream)
    s = report_settings(settings)
    out_dir = Path(out_dir)
    index = index_probes(probes)
    models = model_order(index, upstream)
    tasks = tasks_of(index)
    related, unrelated = split_tasks(tasks, s.related_tasks)
    tasks = related + unrelated
    written: list[Path] = []
    md = [f"# {title}", "",
          f"Models: {', '.join(models) or 'none'}. Related tasks: {', '.join(related) or '–'}; unrelated tasks: "
          f"{', '.join(unrelated) or '–'}. Verdict rule (spec §2.4): better if Δ > τ, worse if Δ < −τ, with "
          f"τ_related = {s.tau_related:g}, τ_unrelated = {s.tau_unrelated:g}. Differences are paired by episode "
          f"(and by seed between seeded students); 95 % CIs: two-level bootstrap (seeds, then episodes), "
          f"{s.bootstrap_resamples} resamples, seed {s.bootstrap_seed}.", ""]
    hashes = {(p["task"], p["kind"]): p.get("episode_indices_hash") for p in probes}
    if hashes:
        md += ["Episodes: " + "; ".join(f"{t}/{k} {h}" for (t, k), h in hashes.items()), ""]
    if s.scale == "tiny":
        md += [f"> {TINY_NOTE}", ""]

    cells = table2_cells(index, upstream, models, tasks, s)
    md += ["## Table-2 view", "",
           "upstream: % on the teacher's classes (teacher head / student head t1); fidelity: % of the `gen` head on "
           "G's coarse labels (G: its own accuracy). Cells: mean ± std over seeds [95 % CI of the mean, bootstrap "
           "over seeds and episodes]; full probes: one run per seed, no episode CI.", "",
           to_markdown(table2_view(cells, models))]
    written.append(to_csv(cells, out_dir / "table2.csv"))

    md += ["## Raw accuracies (Table 4 shape, %)", ""]
    for kind in KINDS:
        rows = raw_table(index, models, tasks, kind)
        if rows:
            md += [f"### {KIND_TITLES[kind]} linear probe", "", to_markdown(rows, ["representation", *tasks])]
    written.append(to_csv(raw_rows(index, models, tasks), out_dir / "raw.csv"))

    per_unit, means = run_deltas(index, tasks_of(index, "fewshot"), related)
    run_counts = counts_table(per_unit, s.tau_related, s.tau_unrelated)
    p_deltas = paper_deltas(paper_rows)
    p_counts = paper_counts_view(s, paper_rows)
    md += ["## Counts (better / similar / worse), 5-shot probes", "",
           f"This run — units: the seeds (a single-run G or T is compared with each seed); τ_related = "
           f"{s.tau_related:g}, τ_unrelated = {s.tau_unrelated:g}:", "",
           to_markdown(run_counts) if run_counts else "(no comparison has both models)\n",
           "Δ (points) and verdict behind it:", "", to_markdown(run_delta_view(per_unit, means, s)),
           f"The paper's Table 4 (001 L203–L224, 10 single teachers), recomputed with the same τ's, beside the "
           f"printed counts (L{paper.COUNTS_LINES[0]}–L{paper.COUNTS_LINES[1]}):", "", to_markdown(p_counts),
           "The paper's per-teacher Δ (mean over related / unrelated tasks, spec §2.1 related sets):", "",
           to_markdown(delta_table(p_deltas, paper.RELATED))]
    written.append(to_csv([{"source": "this run", **r} for r in run_counts]
                          + [{"source": "paper Table 4", **r} for r in p_counts], out_dir / "counts.csv"))
    written.append(to_csv([{"source": "this run", "comparison": c, "unit": u, **d}
                           for c, per in per_unit.items() for u, d in per.items()]
                          + [{"source": "this run", "comparison": c, "unit": "mean over seeds", **d}
                             for c, d in means.items()]
                          + [{"source": "paper Table 4", "comparison": c, "unit": t, **d}
                             for c, per in p_deltas.items() for t, d in per.items()], out_dir / "deltas.csv"))

    checks = evaluate_checks(probes, upstream, s, paper_rows)
    md += ["## Checks (spec §5.2)", "", premise_outcome(checks), "",
           to_markdown(checks, ["id", "statement", "rule", "ours", "paper", "status"])]
    if s.scale == "tiny":
        md += ["K2 is partly guaranteed at tiny scale (the unrelated classes are G's own); K1 is the informative "
               "part (spec §7 item 14).", ""]
    written.append(to_csv([{k: v for k, v in c.items() if k != "differences"} for c in checks],
                          out_dir / "checks.csv"))

    diffs = differences_from_generalist(index, models, tasks, s)
    written.append(to_csv(diffs, out_dir / "differences.csv"))
    if diffs:
        md += ["## Accuracy relative to G (5-shot, points; 95 % CI)", "",
               to_markdown(diffs, ["model", "task", "delta", "ci_low", "ci_high", "per_seed", "signs"])]
        written.append(save_png(deltas_figure(diffs, related, title), out_dir / "deltas.png"))
    if any(c["measure"] in ("upstream", "fidelity") for c in cells):
        written.append(save_png(upstream_figure(cells, title), out_dir / "upstream.png"))
    report = out_dir / "report.md"
    md += ["## Files", ""] + [f"- {p}" for p in [*written, report]] + [""]
    text = "\n".join(md).rstrip() + "\n"
    atomic_write_text(report, text)
    return text.rstrip()
