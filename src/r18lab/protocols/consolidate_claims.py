"""The claims of the consolidation protocol (specs/001-consolidation.md §2.4, §5.2): the verdict rule and the counts
table, the two-level (seeds, then episodes) bootstrap of paired probe differences, and the tiny-scale checks P1–P3,
K1, K2, K3, K5, K12 computed from the probes, beside the paper's effect sizes computed from its own tables."""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..errors import DataError
from ..reference import p001_tables as paper

NAN = float("nan")
HOLDS, FAILS, UNINFORMATIVE, NOT_RUN = "holds", "fails", "uninformative", "not run"
BETTER, SIMILAR, WORSE = "better", "similar", "worse"
GENERALIST = "G"
#: the representations the spec names, in the order of its tables; any other model name is a variant (e.g. RC-1:3)
KNOWN_MODELS = ("G", "T", "TD", "RC", "SL")
#: the counts table's comparisons, (a, b) meaning "a vs b" (spec §2.4; the paper's IN is our G)
COMPARISONS = (("RC", "G"), ("RC", "TD"), ("TD", "G"))
PAPER_COMPARISONS = (("RC", "IN"), ("RC", "TD"), ("TD", "IN"))
PREMISES = ("P1", "P2", "P3")
UPSTREAM_MARGIN = 5.0  # P3: TD upstream ≥ T upstream − 5 points (spec §5.2)
PRESERVE_MARGIN = 2.0  # K2: RC − G on unrelated ≥ −2.0 (spec §5.2)
SOFT_LABEL_MARGIN = 1.5  # K12: |SL − G| ≤ 1.5 on both tasks (spec §5.2)
SEED_SHARE = 2 / 3  # K3: RC − G on related > 0 in ≥ 2 of 3 seeds (spec §5.2)


# -- settings ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportSettings:
    """What the report needs from the protocol's settings (spec §2.4 τ's, §5.2 bootstrap); `scale` "tiny" adds the
    §7 item 14 caveat."""

    tau_related: float = 1.25
    tau_unrelated: float = 5.0
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    related_tasks: tuple[str, ...] = ("related",)
    scale: str = "tiny"


_ALIASES = {"tau_related": ("tau_related", "tau_rel"), "tau_unrelated": ("tau_unrelated", "tau_unrel"),
            "bootstrap_resamples": ("bootstrap_resamples", "resamples", "n_bootstrap"),
            "bootstrap_seed": ("bootstrap_seed",), "related_tasks": ("related_tasks",), "scale": ("scale",)}


def report_settings(settings: Any = None) -> ReportSettings:
    """ReportSettings from a ReportSettings, a mapping or any object with those attributes (aliases: tau_rel,
    tau_unrel, resamples, n_bootstrap); missing or None values take the spec's defaults."""
    if isinstance(settings, ReportSettings):
        return settings
    found: dict[str, Any] = {}
    for name, keys in _ALIASES.items():
        for k in keys:
            v = settings.get(k) if isinstance(settings, Mapping) else getattr(settings, k, None)
            if v is not None:
                found[name] = v
                break
    if "related_tasks" in found:
        rt = found["related_tasks"]
        found["related_tasks"] = (rt,) if isinstance(rt, str) else tuple(rt)
    for k, cast in (("tau_related", float), ("tau_unrelated", float), ("bootstrap_resamples", int),
                    ("bootstrap_seed", int), ("scale", str)):
        if k in found:
            found[k] = cast(found[k])
    return ReportSettings(**found)


# -- verdicts and the counts table (spec §2.4) ----------------------------------------------------------------
def verdict(delta: float, tau: float) -> str:
    """better if Δ > τ, worse if Δ < −τ, else similar (spec §2.4; the paper states no rule, this one reproduces it)."""
    return BETTER if delta > tau else WORSE if delta < -tau else SIMILAR


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else NAN


def mean_deltas(table: Mapping[str, Mapping[str, float]], rows_a: Mapping[str, str], rows_b: Mapping[str, str],
                related_tasks: Mapping[str, Sequence[str]], all_tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per teacher t: Δ_related = mean over t's related tasks of table[rows_a[t]] − table[rows_b[t]], Δ_unrelated the
    same over the other tasks of `all_tasks` (spec §2.4); a task either row lacks is skipped, nan if none is left."""
    out = {}
    for teacher, ra in rows_a.items():
        a, b = table[ra], table[rows_b[teacher]]
        both = [t for t in all_tasks if t in a and t in b]
        rel = set(related_tasks[teacher])
        out[teacher] = {"related": _mean([a[t] - b[t] for t in both if t in rel]),
                        "unrelated": _mean([a[t] - b[t] for t in both if t not in rel])}
    return out


def counts(deltas: Iterable[float], tau: float) -> tuple[int, int, int]:
    """(better, similar, worse) over `deltas` with the rule of `verdict`; nan deltas are not counted."""
    vs = [verdict(d, tau) for d in deltas if not math.isnan(d)]
    return vs.count(BETTER), vs.count(SIMILAR), vs.count(WORSE)


def counts_table(per_teacher_deltas: Mapping[str, Mapping[str, Mapping[str, float]]], tau_rel: float,
                 tau_unrel: float) -> list[dict[str, Any]]:
    """The paper's counts table (001 L87–L89): per comparison ("RC vs IN" → teacher → {related, unrelated} Δ), the
    numbers of teachers better / similar / worse on related (τ_rel) and unrelated (τ_unrel) tasks."""
    rows = []
    for comparison, per_teacher in per_teacher_deltas.items():
        rel = counts([d["related"] for d in per_teacher.values()], tau_rel)
        unrel = counts([d["unrelated"] for d in per_teacher.values()], tau_unrel)
        rows.append({"comparison": comparison,
                     **{f"related {v}": n for v, n in zip((BETTER, SIMILAR, WORSE), rel)},
                     **{f"unrelated {v}": n for v, n in zip((BETTER, SIMILAR, WORSE), unrel)},
                     "n": len(per_teacher)})
    return rows


def delta_table(per_teacher_deltas: Mapping[str, Mapping[str, Mapping[str, float]]],
                related: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """The Δ table behind the counts: one row per teacher (unit), columns "<a> − <b> rel" / "unrel" per comparison."""
    units = list(dict.fromkeys(u for per in per_teacher_deltas.values() for u in per))
    rows = []
    for unit in units:
        row: dict[str, Any] = {"teacher": unit}
        if related is not None:
            row["related tasks"] = ", ".join(related.get(unit, ()))
        for part, short in (("related", "rel"), ("unrelated", "unrel")):
            for comparison, per in per_teacher_deltas.items():
                a, b = comparison.split(" vs ")
                row[f"{a} − {b} {short}"] = per[unit][part] if unit in per else NAN
        rows.append(row)
    return rows


def paper_deltas(table: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Per comparison (RC vs IN, RC vs TD, TD vs IN) and teacher, the mean Δ over related / unrelated tasks of the
    paper's Table 4 (5-shot SVM) or of a table with the same row keys ("IN", "<teacher> RC", "<teacher> TD")."""
    table = paper.table4() if table is None else table

    def key(teacher: str, model: str) -> str:
        return model if model in ("IN", "SL") else f"{teacher} {model}"

    return {f"{a} vs {b}": mean_deltas(table, {t: key(t, a) for t in paper.TEACHERS},
                                       {t: key(t, b) for t in paper.TEACHERS}, paper.RELATED, paper.TASKS)
            for a, b in PAPER_COMPARISONS}


def table2_vs_table4(table: Mapping[str, Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
    """Every Table 2 entry that is also in Table 4, beside its Table 4 value (spec §3.1 item 2: a rounding, ±0.05)."""
    table = paper.table4() if table is None else table
    out = []
    for block in paper.TABLE2:
        for row, key in block.table4_rows.items():
            for col, v in zip(block.columns[1:], block.rows[row][1:]):
                t4 = table[key][col]
                out.append({"teacher": block.teacher, "row": row, "task": col, "table2": v, "table4": t4,
                            "abs diff": abs(v - t4), "lines": f"L{block.lines[0]}–L{block.lines[1]}"})
    return out


# -- the two-level bootstrap (spec §5.2) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """A paired difference a − b: mean over seeds and episodes, percentile CI, and the per-seed means."""

    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]
    seeds: tuple[Any, ...] = ()
    n_episodes: int = 0
    name: str = ""

    @property
    def signs(self) -> str:
        """One character per seed: + (> 0), − (< 0), 0."""
        return "".join("+" if v > 0 else "−" if v < 0 else "0" for v in self.per_seed)


def two_level_bootstrap(a: Any, b: Any = None, n: int = 2000, seed: int = 0, confidence: float = 0.95) -> Difference:
    """Mean of d = a − b over [seeds × episodes] (b = None: of a) with a percentile CI from resampling seeds, then
    episodes: each replicate draws seeds with replacement and one episode draw shared by those seeds (episodes are
    the same for every seed and model, so they are a crossed factor); a or b with one row is broadcast over the
    other's seeds; rows of a and b are paired by position. Replicate means are multinomial-count-weighted sums."""
    d = np.atleast_2d(np.asarray(a, dtype=np.float64))
    if b is not None:
        bb = np.atleast_2d(np.asarray(b, dtype=np.float64))
        if d.shape[1] != bb.shape[1]:
            raise DataError(f"paired by episode, but a has {d.shape[1]} episodes and b {bb.shape[1]}")
        if d.shape[0] != bb.shape[0] and 1 not in (d.shape[0], bb.shape[0]):
            raise DataError(f"a has {d.shape[0]} seeds and b {bb.shape[0]}: pair them by seed first")
        d = d - bb
    if d.ndim != 2 or d.size == 0:
        raise DataError(f"expected a non-empty [seeds × episodes] array, got shape {d.shape}")
    s_count, e_count = d.shape
    per_seed = tuple(float(x) for x in d.mean(axis=1))
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(s_count, np.full(s_count, 1 / s_count), size=n)
    episode_counts = rng.multinomial(e_count, np.full(e_count, 1 / e_count), size=n)
    reps = np.einsum("rs,se,re->r", seed_counts, d, episode_counts) / (s_count * e_count)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return Difference(float(d.mean()), float(low), float(high), per_seed, tuple(range(s_count)), e_count)


# -- the probes, indexed ----------------------------------------------------------------------------------------
Index = dict[tuple[str, str, str], dict[Any, np.ndarray]]  # (model, task, kind) → seed → accuracies per episode


def seed_order(seeds: Iterable[Any]) -> list[Any]:
    """Seeds sorted, None (a model trained once) first."""
    return sorted(seeds, key=lambda s: (s is not None, s if s is not None else 0))


def index_probes(probes: Iterable[Mapping[str, Any]]) -> Index:
    """(model, task, kind) → seed → per-episode accuracies; refuses duplicates and episodes that differ between
    models (a different episode hash or count for one task and kind), since every difference is paired by episode."""
    index: Index = {}
    hashes: dict[tuple[str, str], tuple[str, int, str]] = {}
    for p in probes:
        model, task, kind, seed = str(p["model"]), str(p["task"]), str(p["kind"]), p.get("seed")
        acc = np.asarray(p["accuracies"], dtype=np.float64).ravel()
        who = f"{model} seed {seed} on {task}/{kind}"
        if acc.size == 0:
            raise DataError(f"probe {who} has no accuracies")
        h = str(p.get("episode_indices_hash", ""))
        first = hashes.setdefault((task, kind), (h, acc.size, who))
        if (h, acc.size) != first[:2]:
            raise DataError(f"probe {who} has episodes {h!r} ×{acc.size}, {first[2]} has {first[0]!r} ×{first[1]}: "
                            "differences are paired by episode, so every model must use the same episodes")
        per_seed = index.setdefault((model, task, kind), {})
        if seed in per_seed:
            raise DataError(f"two probes of {who}; drop the duplicate")
        per_seed[seed] = acc
    return index


def tasks_of(index: Index, kind: str | None = None) -> list[str]:
    """The tasks probed (first-seen order), optionally of one probe kind."""
    return list(dict.fromkeys(t for (_, t, k) in index if kind is None or k == kind))


def split_tasks(tasks: Sequence[str], related: Sequence[str]) -> tuple[list[str], list[str]]:
    """(related tasks, unrelated tasks) of `tasks`."""
    return [t for t in tasks if t in related], [t for t in tasks if t not in related]


def probe_matrix(index: Index, model: str, tasks: Sequence[str], kind: str) -> tuple[tuple, np.ndarray] | None:
    """(seeds, [seeds × episodes] accuracies averaged over `tasks`), or None if a task or a seed is missing."""
    per = [index.get((model, t, kind)) for t in tasks]
    if not tasks or any(p is None for p in per):
        return None
    seeds = seed_order(per[0])
    if any(set(p) != set(seeds) for p in per) or len({p[seeds[0]].size for p in per}) != 1:
        return None
    return tuple(seeds), np.mean([[p[s] for s in seeds] for p in per], axis=0)


def paired_difference(index: Index, a: str, b: str | None, tasks: Sequence[str], kind: str,
                      settings: ReportSettings) -> Difference | None:
    """a − b (b = None: a alone) over `tasks`, paired by episode and, when both have several seeds, by seed (common
    seeds); a single run (G, T) is broadcast over the other's seeds. None if an input is missing."""
    ma = probe_matrix(index, a, tasks, kind)
    mb = probe_matrix(index, b, tasks, kind) if b is not None else None
    if ma is None or (b is not None and mb is None):
        return None
    seeds, mat_a = ma
    mat_b = None
    if mb is not None:
        seeds_b, mat_b = mb
        if len(seeds) > 1 and len(seeds_b) > 1:
            common = [s for s in seeds if s in seeds_b]
            if not common:
                return None
            mat_a = mat_a[[seeds.index(s) for s in common]]
            mat_b = mat_b[[seeds_b.index(s) for s in common]]
            seeds = tuple(common)
        elif len(seeds) == 1 and len(seeds_b) > 1:
            seeds = seeds_b
    d = two_level_bootstrap(mat_a, mat_b, settings.bootstrap_resamples, settings.bootstrap_seed)
    name = f"{a} − {b}" if b is not None else a
    return replace(d, seeds=seeds, name=f"{name} {'+'.join(tasks)}")


def upstream_values(upstream: Iterable[Mapping[str, Any]], model: str, key: str = "upstream") -> dict[Any, float]:
    """seed → `key` ("upstream" or "fidelity") of `model`, None values left out."""
    return {r.get("seed"): float(r[key]) for r in upstream if r["model"] == model and r.get(key) is not None}


# -- the checks (spec §5.2) -------------------------------------------------------------------------------------
def format_difference(d: Difference) -> str:
    """'RC − G unrelated: +1.23 [+0.40, +2.01]; seeds +1.10, +1.35 (++)'."""
    ci = "" if math.isnan(d.low) else f" [{d.low:+.2f}, {d.high:+.2f}]"
    seeds = (f"; per seed {', '.join(f'{v:+.2f}' for v in d.per_seed)} ({d.signs})" if len(d.per_seed) > 1
             else "")
    return f"{d.name}: {d.mean:+.2f}{ci}{seeds}"


@dataclass
class _Context:
    index: Index
    upstream: list[Mapping[str, Any]]
    settings: ReportSettings
    related: list[str]
    unrelated: list[str]
    kind: str = "fewshot"

    def diff(self, a: str, b: str | None, group: str) -> Difference | None:
        tasks = self.related if group == "related" else self.unrelated
        d = paired_difference(self.index, a, b, tasks, self.kind, self.settings)
        return None if d is None else replace(d, name=f"{a} − {b} {group}" if b else f"{a} {group}")

    def upstream_mean(self, model: str) -> float | None:
        vals = upstream_values(self.upstream, model)
        return statistics.fmean(vals.values()) if vals else None


Outcome = tuple[bool | None, list[Difference], str]  # (rule met, None if not run; differences; our numbers)


def _positive(d: Difference) -> bool:
    return d.mean > 0 and d.low > 0


def _negative(d: Difference) -> bool:
    return d.mean < 0 and d.high < 0


def _one(ctx: _Context, a: str, b: str, group: str, rule: Callable[[Difference], bool]) -> Outcome:
    d = ctx.diff(a, b, group)
    return (None, [], f"needs {a} and {b} {group} probes") if d is None else (rule(d), [d], format_difference(d))


def _p3(ctx: _Context) -> Outcome:
    t, td = ctx.upstream_mean("T"), ctx.upstream_mean("TD")
    if t is None or td is None:
        return None, [], "needs T and TD upstream accuracies"
    return td >= t - UPSTREAM_MARGIN, [], f"upstream TD {td:.2f} vs T {t:.2f} ({td - t:+.2f})"


def _k1(ctx: _Context) -> Outcome:
    d = ctx.diff("TD", "G", "unrelated")
    if d is None:
        return None, [], "needs TD and G unrelated probes"
    return _negative(d) and all(v < 0 for v in d.per_seed), [d], format_difference(d)


def _k2(ctx: _Context) -> Outcome:
    d1, d2 = ctx.diff("RC", "G", "unrelated"), ctx.diff("RC", "TD", "unrelated")
    if d1 is None or d2 is None:
        return None, [], "needs RC, TD and G unrelated probes"
    met = d1.mean >= -PRESERVE_MARGIN and _positive(d2)
    return met, [d1, d2], f"{format_difference(d1)}; {format_difference(d2)}"


def _k3(ctx: _Context) -> Outcome:
    d = ctx.diff("RC", "G", "related")
    if d is None:
        return None, [], "needs RC and G related probes"
    need = math.ceil(SEED_SHARE * len(d.per_seed) - 1e-9)
    above = sum(v > 0 for v in d.per_seed)
    return above >= need, [d], f"{format_difference(d)}; {above} of {len(d.per_seed)} seeds > 0 (need {need})"


def _k5(ctx: _Context) -> Outcome:
    ups = {m: ctx.upstream_mean(m) for m in ("T", "TD", "RC")}
    k2_met, _, _ = _k2(ctx)
    if any(v is None for v in ups.values()) or k2_met is None:
        return None, [], "needs T, TD, RC upstream accuracies and K2's probes"
    order = ups["T"] >= ups["TD"] >= ups["RC"]
    text = (f"upstream T {ups['T']:.2f} / TD {ups['TD']:.2f} / RC {ups['RC']:.2f} "
            f"({'ordered' if order else 'not ordered'} T ≥ TD ≥ RC); K2's rule {'met' if k2_met else 'not met'}")
    return order and k2_met, [], text


def _k12(ctx: _Context) -> Outcome:
    d1, d2 = ctx.diff("SL", "G", "related"), ctx.diff("SL", "G", "unrelated")
    if d1 is None or d2 is None:
        return None, [], "needs SL and G probes on both task groups (no SL run?)"
    met = abs(d1.mean) <= SOFT_LABEL_MARGIN and abs(d2.mean) <= SOFT_LABEL_MARGIN
    return met, [d1, d2], f"{format_difference(d1)}; {format_difference(d2)}"


def _k4(ctx: _Context) -> Outcome:
    return _one(ctx, "RC", "T", "related", _positive)


#: the loss-weight variants K9 reads: student kinds named by their old:new ratio (spec §5.3)
GENERALIST_HEAVY, TASK_HEAVY = "RC-3:1", "RC-1:3"


def _k9(ctx: _Context) -> Outcome:
    """related(1:3) ≥ related(1:1) ≥ related(3:1), and the reverse order on unrelated (spec §5.3, paper L99–L100)."""
    pairs = [ctx.diff(TASK_HEAVY, "RC", "related"), ctx.diff("RC", GENERALIST_HEAVY, "related"),
             ctx.diff(GENERALIST_HEAVY, "RC", "unrelated"), ctx.diff("RC", TASK_HEAVY, "unrelated")]
    if any(d is None for d in pairs):
        return None, [], f"needs student kinds {TASK_HEAVY} and {GENERALIST_HEAVY} (optional extension, spec §5.3)"
    met = all(d.mean >= 0 for d in pairs)
    return met, pairs, "; ".join(format_difference(d) for d in pairs)


#: id → (statement, pass rule, check), as spec §5.2's table
CHECKS: dict[str, tuple[str, str, Callable[[_Context], Outcome]]] = {
    "P1": ("premise: the teacher brings domain knowledge", "T − G on related > 0, CI > 0",
           lambda c: _one(c, "T", "G", "related", _positive)),
    "P2": ("premise: the teacher over-specialised", "T − G on unrelated < 0, CI < 0",
           lambda c: _one(c, "T", "G", "unrelated", _negative)),
    "P3": ("premise: distillation converged", f"TD upstream ≥ T upstream − {UPSTREAM_MARGIN:g} points", _p3),
    "K1": ("TD forgets", "TD − G on unrelated < 0, CI < 0, all seeds", _k1),
    "K2": ("RC preserves", f"RC − G on unrelated ≥ −{PRESERVE_MARGIN:.1f} (mean) and RC − TD on unrelated > 0, CI > 0",
           _k2),
    "K3": ("RC adds domain knowledge", "RC − G on related > 0 in ≥ 2 of 3 seeds (CI reported)", _k3),
    "K4": ("RC beats its own teacher on related tasks (not a §5.2 check; reported)", "RC − T on related > 0, CI > 0",
           _k4),
    "K5": ("upstream ≠ downstream", "upstream means T ≥ TD ≥ RC while K2 holds", _k5),
    "K9": ("the generalist's weight trades related for unrelated (optional, spec §5.3)",
           "related 1:3 ≥ 1:1 ≥ 3:1 and unrelated 3:1 ≥ 1:1 ≥ 1:3 (means)", _k9),
    "K12": ("soft labels alone do nothing", f"|SL − G| ≤ {SOFT_LABEL_MARGIN:g} on both tasks", _k12),
}


def _span(values: Sequence[float]) -> str:
    return f"{min(values):+.2f} … {max(values):+.2f}"


def paper_evidence(settings: ReportSettings | None = None,
                   table: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, str]:
    """The paper's effect behind each check, computed from its Tables 2 and 4 (001 L68–L80, L203–L224)."""
    s = settings or ReportSettings()
    table = paper.table4() if table is None else table
    deltas = paper_deltas(table)
    t2 = {b.teacher: b for b in paper.TABLE2}

    def t2_diff(teacher: str, a: str, b: str, col: str) -> str:
        blk = t2[teacher]
        j = blk.columns.index(col)
        va, vb = blk.rows[a][j], blk.rows[b][j]
        return f"{teacher} teacher, {col}: {a} {va} vs {b} {vb} ({va - vb:+.1f})"

    def unrel(comparison: str, part: str = "unrelated") -> list[float]:
        return [d[part] for d in deltas[comparison].values()]

    rel_counts = counts(unrel("RC vs IN", "related"), s.tau_related)
    sl = [table["SL"][t] - table["IN"][t] for t in paper.TASKS]
    up = {k: "/".join(str(b.rows[m][0]) for m in ("T", "TD", "RC")) for k, b in t2.items()}
    return {
        "P1": f"Table 2: {t2_diff('iFood', 'T', 'IN', 'iFood')}; {t2_diff('Resisc45', 'T', 'IN', 'Resisc45')}",
        "P2": f"Table 2: {t2_diff('iFood', 'T', 'IN', 'Resisc45')}; {t2_diff('Resisc45', 'T', 'IN', 'Food101')}",
        "P3": "Table 2 upstream: " + "; ".join(f"{k} TD {b.rows['TD'][0]} vs T {b.rows['T'][0]}"
                                                for k, b in t2.items()),
        "K1": f"Table 4: Δ_unrel(TD − IN) {_span(unrel('TD vs IN'))}, {sum(v < 0 for v in unrel('TD vs IN'))}/10 < 0",
        "K2": (f"Table 4: Δ_unrel(RC − IN) {_span(unrel('RC vs IN'))}; Δ_unrel(RC − TD) {_span(unrel('RC vs TD'))}, "
               f"{sum(v > 0 for v in unrel('RC vs TD'))}/10 > 0"),
        "K3": (f"Table 4: Δ_rel(RC − IN) {_span(unrel('RC vs IN', 'related'))}; better/similar/worse "
               f"{rel_counts[0]}/{rel_counts[1]}/{rel_counts[2]} (τ_rel {s.tau_related:g})"),
        "K4": "Table 2: " + "; ".join(t2_diff(k, "RC", "T", k) for k in ("iFood", "Resisc45")),
        "K5": "Table 2 upstream T/TD/RC: " + "; ".join(f"{k} {v}" for k, v in up.items()),
        "K9": ("Table 4 L251–L253, 1:3 / 1:1 / 3:1: Cars196 d 61.21 / 59.21 / 52.80 (related); Resisc45 67.83 / "
               "70.00 / 70.82, iFood 26.70 / 28.42 / 29.18, Food101 33.35 / 35.28 / 36.53 (unrelated)"),
        "K12": f"Table 4: SL − IN {_span(sl)} on all 10 tasks",
    }


def evaluate_checks(probes: Iterable[Mapping[str, Any]], upstream: Iterable[Mapping[str, Any]], settings: Any = None,
                    paper_table: Mapping[str, Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
    """Spec §5.2's checks on the 5-shot ("fewshot") probes and the upstream accuracies: per check the statement,
    pass rule, our numbers (mean, 95 % two-level bootstrap CI, per-seed signs), the paper's evidence and a status —
    holds / fails / not run (an input is missing) / uninformative (every K check once a premise P1–P3 fails)."""
    s = report_settings(settings)
    index = index_probes(probes)
    related, unrelated = split_tasks(tasks_of(index, "fewshot"), s.related_tasks)
    ctx = _Context(index, list(upstream), s, related, unrelated)
    evidence = paper_evidence(s, paper_table)
    rows = []
    for cid, (statement, rule, check) in CHECKS.items():
        met, diffs, ours = check(ctx)
        first = diffs[0] if diffs else None
        rows.append({"id": cid, "statement": statement, "rule": rule, "ours": ours,
                     "mean": first.mean if first else NAN, "ci_low": first.low if first else NAN,
                     "ci_high": first.high if first else NAN,
                     "per_seed": ", ".join(f"{v:+.2f}" for v in first.per_seed) if first else "",
                     "signs": " ".join(d.signs for d in diffs), "paper": evidence[cid], "rule_met": met,
                     "status": NOT_RUN if met is None else HOLDS if met else FAILS, "differences": diffs})
    failed = [r["id"] for r in rows if r["id"] in PREMISES and r["status"] == FAILS]
    if failed:
        for r in rows:
            if r["id"] not in PREMISES and r["status"] != NOT_RUN:
                r["status"] = UNINFORMATIVE
    return rows


def premise_outcome(checks: Sequence[Mapping[str, Any]]) -> str:
    """One line on the premises P1–P3 and what they mean for the K checks (spec §5.2)."""
    prem = {r["id"]: r["status"] for r in checks if r["id"] in PREMISES}
    listed = ", ".join(f"{k} {v}" for k, v in prem.items())
    if any(v == FAILS for v in prem.values()):
        return (f"Premises: {listed} — the scenario does not reproduce the paper's situation, so every K check is "
                "reported as uninformative (its rule's outcome is kept in `rule_met`).")
    if any(v == NOT_RUN for v in prem.values()):
        return f"Premises: {listed} — not all premises could be checked; read the K checks with that in mind."
    return f"Premises: {listed} — the scenario reproduces the paper's situation; the K checks are informative."
