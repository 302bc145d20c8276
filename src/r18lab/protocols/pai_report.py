"""The pai sweep's report: accuracy per generator × density × pretraining mode (mean ± std), each generator
against random and each mode against N = 0 (paired over seeds), the spread across seeds (the supplement's
instability), and the mask topology beside accuracy with Spearman's ρ (spec 002a §4, C1–C4)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..results.stats import mean_std
from ..results.tables import compare, summarize, to_csv, to_markdown
from ..train.checkpoint import atomic_write_text
from .pai import DENSE, PaiSettings
from .spec import RunSpec, read_summary

TOPOLOGY = ("distance", "distance_all", "delta_r_sum", "gap_sum")


def run_topology(spec: RunSpec, cache_dir: Path) -> dict[str, float]:
    """Network-level topology of a run's mask at pruning time (weights θ_N ⊙ m): the full-spectrum distance D
    from the origin (spec §1.7's only concrete reading), Σ Δr and Σ λ over the valid layers, empty layers.
    Cached per run identity under the protocol folder."""
    cache = cache_dir / f"{spec.identity}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from ..analysis.masks import mask_topology, network_coordinate, spectral_distance
    from ..pruning.io import load_masks

    f = load_masks(spec.out_dir)
    rows = mask_topology(f.masks, {n: f.weights[n] * f.masks[n] for n in f.masks} if f.weights else None)
    layers = {r["name"]: r for r in rows}
    valid = [layers[n] for n in network_coordinate(layers)["names"]]
    out = {"distance": float(spectral_distance(layers)),
           "distance_all": float(spectral_distance(layers, min_kept=0, min_density=0.0)),
           "delta_r_sum": float(sum(r["delta_r"] for r in valid)) if valid else math.nan,
           "gap_sum": float(sum(r["weighted_gap"] for r in valid)) if valid else math.nan,
           "collapsed_layers": sum(1 for r in rows if r["collapsed"]),
           "empty_layers": sum(1 for r in rows if r["kept"] == 0)}
    atomic_write_text(cache, json.dumps(out))
    return out


def population_distances(spec: RunSpec) -> list[float]:
    """The candidate distances D of a run's population search (empty without one), from its mask file's metadata."""
    from ..models.io import read_metadata
    from ..pruning.io import MASKS_FILE, META_KEY

    meta = json.loads(read_metadata(spec.out_dir / MASKS_FILE).get(META_KEY, "{}"))
    return [float(d) for d in meta.get("population_distance") or []]


def collect_rows(specs: list[RunSpec], out_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per finished run: method, density, pretrain_steps, seed, acc, achieved density, topology."""
    rows = []
    for spec in specs:
        summary = read_summary(spec)
        if not summary or summary.get("status") != "done":
            continue
        row = {**spec.tags, "acc": summary["final"][f"eval/{spec.eval_head}/acc"],
               "seconds": summary["train_seconds"]}
        if spec.tags["method"] != DENSE and out_dir is not None:
            row.update(run_topology(spec, out_dir / "topology"))
            population = population_distances(spec)
            if population:
                row["population_distance"] = population
        rows.append(row)
    return rows


def verdict(diff: float, lo: float, hi: float) -> str:
    """held: every paired 95 % CI above 0; direction only: mean above 0, CI reaches 0; not held: mean ≤ 0."""
    if not math.isfinite(diff):
        return "not measured"
    if diff <= 0:
        return "not held"
    return "held" if math.isfinite(lo) and lo > 0 else "direction only"


def spearman(rows: list[dict[str, Any]], key: str) -> tuple[float, float, int]:
    """Spearman ρ (and p) between `key` and accuracy over rows where both are finite."""
    from scipy.stats import spearmanr

    pairs = [(r[key], r["acc"]) for r in rows if key in r and math.isfinite(r[key])]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2:
        return math.nan, math.nan, len(pairs)
    res = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    return float(res.statistic), float(res.pvalue), len(pairs)


def write_report(rows: list[dict[str, Any]], settings: PaiSettings, out_dir: Path, title: str) -> str:
    """report.md, results.csv, summary.csv, the plots; returns the markdown."""
    from .pai_plots import plot_accuracy_vs_density, plot_population, plot_topology_vs_accuracy

    if not rows:
        return "no finished runs yet"
    rows = sorted(rows, key=lambda r: (r["density"], r["pretrain_steps"], r["method"], r["seed"]))
    to_csv([{k: v for k, v in r.items() if k != "population_distance"} for r in rows], out_dir / "results.csv")
    pruned = [r for r in rows if r["method"] != DENSE]
    summary = summarize(rows, by=("method", "density", "pretrain_steps"), value="acc")
    for s in summary:
        s["sparsity"] = 1 - s["density"]
    to_csv(summary, out_dir / "summary.csv")
    md = [f"## {title}", "", "### Test accuracy (%), mean ± std over seeds (density = kept fraction)", "",
          to_markdown(summary, ["method", "density", "sparsity", "pretrain_steps", "n", "mean ± std"],
                      {"density": ".3g", "sparsity": ".3g"}), ""]
    md += _against_baseline(pruned, settings.baseline) + _pretraining(pruned, settings) + _topology(pruned)
    plots = [plot_accuracy_vs_density(summary, out_dir / "accuracy_vs_density.png", title)]
    if any("distance" in r for r in pruned):
        plots.append(plot_topology_vs_accuracy(pruned, out_dir / "topology_vs_accuracy.png", title))
    populations = [(f"{r['method']} d={r['density']:g} N={r['pretrain_steps']} s{r['seed']}", r["population_distance"])
                   for r in pruned if r.get("population_distance")]
    if populations:
        plots.append(plot_population(populations, out_dir / "population.png", title))
    md.append("plots: " + ", ".join(str(p) for p in plots))
    text = "\n".join(md)
    atomic_write_text(out_dir / "report.md", text + "\n")
    return text


def _against_baseline(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    """C1: each generator − the baseline (random by default), paired over seeds, per density and mode."""
    if not any(r["method"] == baseline for r in rows):
        return []
    tests = compare(rows, baseline, "seed", group=("density", "pretrain_steps"), value="acc")
    for t in tests:
        t["verdict"] = verdict(t["diff"], t["ci_low"], t["ci_high"])
    return [f"### {'C1: ' if baseline == 'random' else ''}each generator − {baseline} (paired over seeds, 95 % CI)", "",
            to_markdown(tests, ["density", "pretrain_steps", "method", "n_pairs", "diff", "ci_low", "ci_high",
                                "p_paired", "verdict"], {"density": ".3g", "p_paired": ".4f"}), ""]


def _pretraining(rows: list[dict[str, Any]], settings: PaiSettings) -> list[str]:
    """C2: acc(N) − acc(0) per generator and density; C3: std across seeds at N vs at 0."""
    if 0 not in settings.pretrain_steps or len(settings.pretrain_steps) < 2:
        return []
    tests = compare(rows, 0, "seed", group=("method", "density"), method_key="pretrain_steps", value="acc")
    for t in tests:
        t["verdict"] = verdict(t["diff"], t["ci_low"], t["ci_high"])
        at = {n: [r["acc"] for r in rows if (r["method"], r["density"], r["pretrain_steps"]) ==
                  (t["method"], t["density"], n)] for n in (0, t["pretrain_steps"])}
        t["std_0"], t["std_N"] = mean_std(at[0])[1], mean_std(at[t["pretrain_steps"]])[1]
        t["std_ratio"] = t["std_N"] / t["std_0"] if t["std_0"] > 0 else math.nan
    return ["### C2/C3: brief dense pretraining (N steps) − pruning at θ0, and the spread across seeds", "",
            "`diff` = acc(N) − acc(0) paired over seeds; `std_ratio` = std(N)/std(0): above 1 means less stable "
            "after pretraining (the supplement's GraSP-on-ResNet-18 / SNIP-on-ResNet-34 remark; 3 seeds are weak "
            "evidence for a spread).", "",
            to_markdown(tests, ["method", "density", "pretrain_steps", "n_pairs", "diff", "ci_low", "ci_high",
                                "verdict", "std_0", "std_N", "std_ratio"], {"density": ".3g"}), ""]


def _topology(rows: list[dict[str, Any]]) -> list[str]:
    """C4: Spearman ρ of the topology numbers with accuracy, pooled and within each density."""
    if not any("distance" in r for r in rows):
        return []
    out = []
    groups = {"all densities": rows, **{f"density {d:g}": [r for r in rows if r["density"] == d]
                                        for d in sorted({r["density"] for r in rows})}}
    for label, group in groups.items():
        for key in TOPOLOGY:
            rho, p, n = spearman(group, key)
            out.append({"masks": label, "measure": key, "n": n, "rho": rho, "p": p})
    return ["### C4: mask topology at pruning time vs final accuracy (Spearman ρ)", "",
            "`distance` = Σ_l ‖(Δr_l, λ_l)‖₂ over layers with > 1000 kept weights (origin reference; spec §1.7, "
            "flagged: the paper's reference point is not known); `distance_all` the same over every layer whose "
            "metrics are defined (at small widths few layers keep 1000 weights); Σ Δr and Σ λ over the valid "
            "layers. Pooled over densities, density drives both accuracy and topology: read the rows per density.", "",
            to_markdown(out, ["masks", "measure", "n", "rho", "p"], {"rho": ".3f", "p": ".3g"}), ""]
