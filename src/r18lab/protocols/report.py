"""Protocol results: rows from finished runs → mean ± std tables (accuracy, balanced accuracy), paired tests,
per-class accuracy, accuracy-vs-labels plot; and `r18lab report DIR` on a protocol directory."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..results.plots import plot_accuracy_vs_labels
from ..results.tables import compare, summarize, summarize_per_class, to_csv, to_markdown, worst_classes
from ..train.checkpoint import atomic_write_text
from .lowdata import LowDataSettings
from .robustness_columns import columns, read_result
from .spec import RunSpec, read_summary

#: columns of results.csv (the per-class lists go to per_class.csv)
RESULT_COLUMNS_LAST = ("acc", "balanced_acc", "seconds")


def _order(value: Any) -> tuple:
    """Sort key that puts numbers (label budgets) in order and other values (e.g. `all`) after them."""
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def collect_rows(specs: list[RunSpec], settings: LowDataSettings) -> list[dict[str, Any]]:
    """One row per finished run of a listed method: labels, method, seed, acc and balanced_acc (its eval head),
    seconds, and the per-class accuracies with the class names when its summary holds them."""
    rows = []
    for spec in specs:
        if spec.tags["method"] not in settings.methods:
            continue
        summary = read_summary(spec)
        if not summary or summary.get("status") != "done":
            continue
        final, head = summary["final"], spec.eval_head
        per = summary.get("per_class") or {}
        rep = (per.get("heads") or {}).get(head) or {}
        row = {**spec.tags, "acc": final[f"eval/{head}/acc"],
               "balanced_acc": final.get(f"eval/{head}/balanced_acc"), "seconds": summary["train_seconds"],
               "per_class_acc": rep.get("per_class_acc"), "classes": per.get("classes")}
        robust = read_result(spec, settings.robustness) if settings.robustness is not None else None
        rows.append({**row, **(columns(robust) if robust else {})})
    order = {m: i for i, m in enumerate(settings.methods)}
    return sorted(rows, key=lambda r: (_order(r["labels"]), order[r["method"]], r["seed"]))


def write_report(rows: list[dict[str, Any]], out_dir: Path, title: str) -> str:
    """Write results.csv, summary.{md,csv}, tests.csv, accuracy_vs_labels.png and, when the runs recorded them,
    balanced.csv and per_class.csv; return the markdown."""
    if not rows:
        return "no finished runs yet"
    summary = summarize(rows, by=("labels", "method"), value="acc")
    tests = compare(rows, None, "seed", group=("labels",), value="acc")
    names = list(dict.fromkeys(k for r in rows for k in r))
    keys = [k for k in names if k not in ("per_class_acc", "classes", *RESULT_COLUMNS_LAST) and not k.startswith("c_")]
    robust = [k for k in names if k.startswith("c_")]
    tables = [to_csv(rows, out_dir / "results.csv", [*keys, *RESULT_COLUMNS_LAST, *robust]),
              to_csv(summary, out_dir / "summary.csv"), to_csv(tests, out_dir / "tests.csv")]
    plot = plot_accuracy_vs_labels(summary, out_dir / "accuracy_vs_labels.png", title)
    md = [f"## {title}", "", "### Test accuracy (%), mean ± std over seeds", "",
          to_markdown(summary, ["labels", "method", "n", "mean ± std"]), ""]
    with_balanced = [r for r in rows if isinstance(r.get("balanced_acc"), (int, float))
                     and math.isfinite(r["balanced_acc"])]
    if with_balanced:
        balanced = summarize(with_balanced, by=("labels", "method"), value="balanced_acc")
        tables.append(to_csv(balanced, out_dir / "balanced.csv"))
        md += ["### Balanced accuracy (mean per-class accuracy, %), mean ± std over seeds", "",
               to_markdown(balanced, ["labels", "method", "n", "mean ± std"]), ""]
    per_class = summarize_per_class(rows, by=("labels", "method"))
    if per_class:
        tables.append(to_csv(per_class, out_dir / "per_class.csv"))
        md += ["### Worst classes (mean per-class accuracy over seeds, %; all in per_class.csv)", "",
               to_markdown(worst_classes(per_class, ("labels", "method")), None), ""]
    if tests:
        md += [f"### Each method against {tests[0]['baseline']} (paired over seeds; Welch as a second column)", "",
               to_markdown(tests, ["labels", "method", "n_pairs", "diff", "ci_low", "ci_high", "p_paired", "p_welch"],
                           {"p_paired": ".4f", "p_welch": ".4f"}), ""]
    if robust:
        md += robustness_section(rows, robust, out_dir, tables)
    md += [f"tables: {', '.join(p.name for p in tables)}, summary.md (in {out_dir})", f"plot: {plot}"]
    text = "\n".join(md)
    atomic_write_text(out_dir / "summary.md", text + "\n")
    return text


def robustness_section(rows: list[dict[str, Any]], robust: list[str], out_dir: Path, tables: list) -> list[str]:
    """Markdown and robustness.csv: per (labels, method), mean ± std over seeds of the clean subset, each
    severity's mean over corruptions and the overall corrupted mean; paired tests of the corrupted mean."""
    with_c = [r for r in rows if "c_mean" in r]
    wide: dict[tuple, dict[str, Any]] = {}
    points = []  # accuracy vs severity (0 = clean), Figure 13's left panel
    budgets = {r["labels"] for r in with_c}
    for col in robust:
        for s in summarize([r for r in with_c if col in r], by=("labels", "method"), value=col):
            entry = wide.setdefault((s["labels"], s["method"]), {"labels": s["labels"], "method": s["method"],
                                                                  "n": s["n"]})
            entry[col[2:]] = s["mean ± std"]
            if col == "c_clean" or col[2:3] == "s":
                points.append({"severity": 0 if col == "c_clean" else int(col[3:]), "mean": s["mean"],
                               "std": s["std"], "method": s["method"] if len(budgets) == 1
                               else f"{s['method']} ({s['labels']})"})
    table = list(wide.values())
    tables.append(to_csv(table, out_dir / "robustness.csv"))
    plot = plot_accuracy_vs_labels(sorted(points, key=lambda p: p["severity"]), out_dir / "robustness.png",
                                   "accuracy vs corruption severity (0 = clean)", x="severity",
                                   ylabel="test accuracy (%), mean over corruptions")
    order = ["labels", "method", "n", "clean", *[c[2:] for c in robust if c.startswith("c_s")], "mean"]
    md = ["### Corruption robustness (CIFAR-10-C, eval head; accuracy %, mean ± std over seeds)", "",
          "clean = the uncorrupted test subset; s1…s5 = mean over corruptions at that severity; mean = over every "
          "corrupted cell", "", to_markdown(table, [c for c in order if any(c in t for t in table)]), ""]
    tests = compare(with_c, None, "seed", group=("labels",), value="c_mean")
    if tests:
        md += [f"### Corrupted mean: each method against {tests[0]['baseline']} (paired over seeds)", "",
               to_markdown(tests, ["labels", "method", "n_pairs", "diff", "ci_low", "ci_high", "p_paired", "p_welch"],
                           {"p_paired": ".4f", "p_welch": ".4f"}), ""]
    return md + [f"plot: {plot}", ""]


def report_directory(root: Path, manifest: Any) -> str:
    """`r18lab report DIR` on a protocol directory with a protocol.json: rebuild the protocol from the recipe
    tree it was run with, mark the runs whose folders hold them finished (nothing is trained), and write its
    report. Waves that depend on earlier results see those finished runs, as on a rerun."""
    from ..registry import PROTOCOLS
    from .base import RunContext
    from .spec import folder_state

    if not isinstance(manifest, dict) or not isinstance(manifest.get("name"), str) \
            or not isinstance(manifest.get("tree"), dict):
        raise ConfigError(f"{root / 'protocol.json'} is not a protocol manifest ({{name, tree, title}})")
    protocol = PROTOCOLS.get(manifest["name"])(manifest["name"], manifest["tree"], root)
    ctx = RunContext()
    for wave in protocol.waves(ctx):
        for spec in wave:
            ctx.specs.setdefault(spec.run_id, spec)
            if folder_state(spec) == "done":
                ctx.done.add(spec.run_id)
            else:
                ctx.failures.setdefault(spec.run_id, "not finished")
    text = protocol.report(ctx, manifest.get("title") or f"{manifest['name']} protocol")
    unfinished = len(ctx.specs) - len(ctx.done)
    return text + (f"\n{unfinished} of {len(ctx.specs)} runs not finished; rerun the protocol to finish them"
                   if unfinished else "")
