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
        rows.append({**spec.tags, "acc": final[f"eval/{head}/acc"],
                     "balanced_acc": final.get(f"eval/{head}/balanced_acc"), "seconds": summary["train_seconds"],
                     "per_class_acc": rep.get("per_class_acc"), "classes": per.get("classes")})
    order = {m: i for i, m in enumerate(settings.methods)}
    return sorted(rows, key=lambda r: (_order(r["labels"]), order[r["method"]], r["seed"]))


def write_report(rows: list[dict[str, Any]], out_dir: Path, title: str) -> str:
    """Write results.csv, summary.{md,csv}, tests.csv, accuracy_vs_labels.png and, when the runs recorded them,
    balanced.csv and per_class.csv; return the markdown."""
    if not rows:
        return "no finished runs yet"
    summary = summarize(rows, by=("labels", "method"), value="acc")
    tests = compare(rows, None, "seed", group=("labels",), value="acc")
    columns = [k for k in rows[0] if k not in ("per_class_acc", "classes", *RESULT_COLUMNS_LAST)]
    tables = [to_csv(rows, out_dir / "results.csv", [*columns, *RESULT_COLUMNS_LAST]),
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
    md += [f"tables: {', '.join(p.name for p in tables)}, summary.md (in {out_dir})", f"plot: {plot}"]
    text = "\n".join(md)
    atomic_write_text(out_dir / "summary.md", text + "\n")
    return text


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
