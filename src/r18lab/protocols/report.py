"""Protocol results: rows from finished runs → mean ± std table, paired tests, accuracy-vs-labels plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results.plots import plot_accuracy_vs_labels
from ..results.tables import compare, summarize, to_csv, to_markdown
from ..train.checkpoint import atomic_write_text
from .lowdata import LowDataSettings
from .spec import RunSpec, read_summary


def collect_rows(specs: list[RunSpec], settings: LowDataSettings) -> list[dict[str, Any]]:
    """One row per finished run of a listed method: labels, method, seed, acc (its eval head), seconds."""
    rows = []
    for spec in specs:
        if spec.tags["method"] not in settings.methods:
            continue
        summary = read_summary(spec)
        if not summary or summary.get("status") != "done":
            continue
        rows.append({**spec.tags, "acc": summary["final"][f"eval/{spec.eval_head}/acc"],
                     "seconds": summary["train_seconds"]})
    order = {m: i for i, m in enumerate(settings.methods)}
    return sorted(rows, key=lambda r: (r["labels"], order[r["method"]], r["seed"]))


def write_report(rows: list[dict[str, Any]], out_dir: Path, title: str) -> str:
    """Write results.csv, summary.{md,csv}, tests.csv and accuracy_vs_labels.png; return the markdown."""
    if not rows:
        return "no finished runs yet"
    summary = summarize(rows, by=("labels", "method"), value="acc")
    tests = compare(rows, None, "seed", group=("labels",), value="acc")
    to_csv(rows, out_dir / "results.csv")
    to_csv(summary, out_dir / "summary.csv")
    to_csv(tests, out_dir / "tests.csv")
    plot = plot_accuracy_vs_labels(summary, out_dir / "accuracy_vs_labels.png", title)
    md = [f"## {title}", "", "### Test accuracy (%), mean ± std over seeds", "",
          to_markdown(summary, ["labels", "method", "n", "mean ± std"]), ""]
    if tests:
        md += [f"### Each method against {tests[0]['baseline']} (paired over seeds; Welch as a second column)", "",
               to_markdown(tests, ["labels", "method", "n_pairs", "diff", "ci_low", "ci_high", "p_paired", "p_welch"],
                           {"p_paired": ".4f", "p_welch": ".4f"}), ""]
    md.append(f"plot: {plot}")
    text = "\n".join(md)
    atomic_write_text(out_dir / "summary.md", text + "\n")
    return text
