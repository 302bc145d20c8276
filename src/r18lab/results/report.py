"""`r18lab report DIR`: the plots and tables of one run directory, or of a protocol directory's runs.

A run directory (metrics.jsonl): learning_curves.png; confusion.png, per_class.csv and a per-class table when the
summary holds the confusion matrices; alpha_by_epoch.png, lr_scale_by_epoch.png, lr_by_epoch.png only when the run
logged those series (the TempBalance hook). A protocol directory: the protocol's own tables and plots when it
left a protocol.json (`r18lab protocol` writes one), else a table of its finished runs grouped over seeds.
Every file written is listed in the returned text."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, R18Error
from .confusion import per_class_note, per_class_rows, worst_first
from .metrics import read_metrics
from .plots import plot_confusion, plot_group_accuracy, plot_learning_curves, plot_series
from .tables import summarize, summarize_per_class, to_csv, to_markdown, worst_classes

#: written by `r18lab protocol` into its directory: how to rebuild the protocol for `report`
PROTOCOL_FILE = "protocol.json"
#: per-layer series a hook logs each epoch (TempBalance: alpha/<layer>, lr_scale/<layer>, lr/<layer>)
SERIES = ("alpha", "lr_scale", "lr")
PER_CLASS_COLUMNS = ["class", "n", "correct", "acc", "confused_with"]


def report(path: Path, out_dir: Path | None = None) -> str:
    """Report a run directory or a protocol directory (see the module doc)."""
    if (path / "metrics.jsonl").is_file():
        return report_run(path, out_dir)
    if (path / PROTOCOL_FILE).is_file() or run_folders(path):
        return report_protocol_dir(path, out_dir)
    raise ConfigError(f"{path} holds neither a run (metrics.jsonl) nor a protocol's finished runs (*/summary.json); "
                      "give the --out directory of `r18lab train` or of `r18lab protocol`")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def report_run(run_dir: Path, out_dir: Path | None = None) -> str:
    """learning_curves.png; confusion.png + per_class.csv + the per-class table (worst classes first when there
    are many) when summary.json holds them; per-layer series plots only when logged. Lists what it wrote."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise R18Error(f"{run_dir} has no metrics.jsonl; give the directory of a run (r18lab train --out DIR)")
    records = read_metrics(metrics)
    out_dir = out_dir or run_dir
    written = [plot_learning_curves([r for r in records if any(k.startswith(("train/", "eval/")) for k in r)],
                                    out_dir / "learning_curves.png")]
    for prefix in SERIES:
        keys = sorted({k for r in records for k in r if k.startswith(prefix + "/")})
        if keys:
            written.append(plot_series(records, keys, out_dir / f"{prefix}_by_epoch.png"))
    lines: list[str] = []
    summary = _read_json(run_dir / "summary.json")
    per = summary.get("per_class") if isinstance(summary, dict) else None
    if isinstance(per, dict) and per.get("heads"):
        lines, files = per_class_report(per, out_dir)
        written += files
    return "\n".join(lines + [f"{'table' if p.suffix == '.csv' else 'plot'}: {p}" for p in written])


def per_class_report(per: dict[str, Any], out_dir: Path, head: str | None = None) -> tuple[list[str], list[Path]]:
    """From a summary's `per_class` ({classes, heads: {head: confusion, ...}}): the console table of `head` (main,
    else the first), confusion.png of it, per_class.csv of every head."""
    heads = per["heads"]
    head = head or ("main" if "main" in heads else next(iter(heads)))
    classes = per.get("classes")
    table: list[dict[str, Any]] = []
    for h, rep in heads.items():
        table += [{"head": h, **r} for r in per_class_rows(rep["confusion"], classes)]
    csv_path = to_csv(table, out_dir / "per_class.csv", ["head", *PER_CLASS_COLUMNS])
    png = plot_confusion(heads[head]["confusion"], out_dir / "confusion.png", classes,
                         f"{head}: confusion matrix (balanced accuracy {heads[head]['balanced_acc']:.1f}%)")
    return per_class_lines(heads[head]["confusion"], classes, head), [png, csv_path]


def per_class_lines(conf, classes, head: str) -> list[str]:
    """The per-class table of one head (all classes up to SHOW_CLASSES, else the worst first) and its note."""
    rows = per_class_rows(conf, classes)
    return [f"### {head}: per-class accuracy (%)", "",
            to_markdown(worst_first(rows), PER_CLASS_COLUMNS, {"acc": ".1f"}), per_class_note(rows)]


# -- protocol directories ------------------------------------------------------------------------------------

_SEED = re.compile(r"^(?P<stem>.*?)-?seed(?P<seed>\d+)(?:-[0-9a-f]{8})?$")


def run_folders(root: Path) -> list[Path]:
    """Folders under `root` (not root itself) holding a finished run's summary.json, sorted."""
    found = []
    for p in sorted(root.rglob("summary.json")):
        folder = p.parent
        if folder == root or "checkpoints" in folder.relative_to(root).parts:
            continue
        s = _read_json(p)
        if isinstance(s, dict) and s.get("status") == "done":
            found.append(folder)
    return found


def group_and_seed(rel: Path) -> tuple[str, int | None]:
    """A run folder's group (its path with the `seed<k>-<id>` part taken out) and seed: `n40/ce/seed0-ab12cd34`
    → ("n40/ce", 0); a folder without a seed part is its own group."""
    m = _SEED.match(rel.name)
    if not m:
        return rel.as_posix(), None
    stem = m.group("stem")
    group = (rel.parent / stem) if stem else rel.parent
    return group.as_posix() if group.as_posix() != "." else rel.as_posix(), int(m.group("seed"))


def collect_run_rows(root: Path) -> list[dict[str, Any]]:
    """One row per finished run under `root`: run, group, seed, head (main, else the first), acc, balanced_acc,
    num_train, seconds, and the per-class accuracies and class names when the summary holds them."""
    rows = []
    for folder in run_folders(root):
        s = _read_json(folder / "summary.json")
        final = s.get("final", {})
        heads = [k.split("/")[1] for k in final if k.startswith("eval/") and k.endswith("/acc")]
        if not heads:
            continue
        head = "main" if "main" in heads else heads[0]
        rel = folder.relative_to(root)
        group, seed = group_and_seed(rel)
        per = s.get("per_class") or {}
        rep = (per.get("heads") or {}).get(head) or {}
        rows.append({"run": rel.as_posix(), "group": group, "seed": seed, "head": head,
                     "acc": final[f"eval/{head}/acc"], "balanced_acc": final.get(f"eval/{head}/balanced_acc"),
                     "num_train": s.get("num_train"), "seconds": s.get("train_seconds"),
                     "per_class_acc": rep.get("per_class_acc"), "classes": per.get("classes")})
    return rows


def group_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group: n runs, accuracy and balanced accuracy mean ± std over them (std nan for one run)."""
    acc = summarize(rows, by="group", value="acc")
    bal = {r["group"]: r for r in summarize([r for r in rows if isinstance(r.get("balanced_acc"), (int, float))],
                                            by="group", value="balanced_acc")}
    out = []
    for r in acc:
        b = bal.get(r["group"], {})
        out.append({"group": r["group"], "n": r["n"], "acc": r["mean"], "acc_std": r["std"],
                    "accuracy": r["mean ± std"], "balanced_acc": b.get("mean"), "balanced_acc_std": b.get("std"),
                    "balanced accuracy": b.get("mean ± std", "")})
    return out


def report_protocol_dir(root: Path, out_dir: Path | None = None) -> str:
    """The protocol's own report when `root` holds protocol.json (rebuilt from it, nothing trained), else
    `report_runs`."""
    manifest = root / PROTOCOL_FILE
    if manifest.is_file():
        if out_dir is not None and out_dir.resolve() != root.resolve():
            raise ConfigError(f"a protocol's report is written in its own directory {root}; drop --out")
        from ..protocols.report import report_directory
        try:
            return report_directory(root, _read_json(manifest))
        except R18Error as e:
            note = f"note: the protocol could not be rebuilt from {manifest} ({e}); its finished runs instead"
            return note + "\n" + report_runs(root, out_dir)
    return report_runs(root, out_dir)


def report_runs(root: Path, out_dir: Path | None = None) -> str:
    """Tables and a plot of the finished runs under `root`, grouped over seeds: runs.csv, runs_summary.csv,
    runs_per_class.csv, runs_accuracy.png (error bars: std over seeds) and runs_report.md."""
    from ..atomic import atomic_write_text

    rows = collect_run_rows(root)
    if not rows:
        raise R18Error(f"{root} has no finished runs (*/summary.json with status done) to report")
    out_dir = out_dir or root
    out_dir.mkdir(parents=True, exist_ok=True)
    table = group_table(rows)
    written = [to_csv(rows, out_dir / "runs.csv", ["run", "group", "seed", "head", "acc", "balanced_acc",
                                                   "num_train", "seconds"]),
               to_csv(table, out_dir / "runs_summary.csv", ["group", "n", "acc", "acc_std", "balanced_acc",
                                                            "balanced_acc_std"])]
    md = [f"## {root.name}: {len(rows)} finished runs", "",
          "### Test accuracy (%), mean ± std over seeds (the main head, else the first)", "",
          to_markdown(table, ["group", "n", "accuracy", "balanced accuracy"]), ""]
    per_class = summarize_per_class(rows, by="group")
    if per_class:
        written.append(to_csv(per_class, out_dir / "runs_per_class.csv"))
        md += ["### Worst classes (mean per-class accuracy over seeds, %)", "",
               to_markdown(worst_classes(per_class, "group"), None), ""]
    written.append(plot_group_accuracy(table, out_dir / "runs_accuracy.png", f"{root.name}: accuracy by group"))
    report_md = out_dir / "runs_report.md"
    md += [f"{'table' if p.suffix == '.csv' else 'plot'}: {p}" for p in written] + [f"report: {report_md}"]
    text = "\n".join(md)
    atomic_write_text(report_md, text + "\n")
    return text
