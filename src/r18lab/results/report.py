"""`r18lab report RUN_DIR`: learning curves and per-layer series (TempBalance α, lr scale) of one run."""
from __future__ import annotations

from pathlib import Path

from ..errors import R18Error
from .metrics import read_metrics
from .plots import plot_learning_curves, plot_series


def report_run(run_dir: Path, out_dir: Path | None = None) -> str:
    """Write learning_curves.png (and alpha_by_epoch.png / lr_scale_by_epoch.png when logged); list them."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise R18Error(f"{run_dir} has no metrics.jsonl; give the directory of a run (r18lab train --out DIR)")
    records = read_metrics(metrics)
    out_dir = out_dir or run_dir
    written = [plot_learning_curves([r for r in records if any(k.startswith(("train/", "eval/")) for k in r)],
                                    out_dir / "learning_curves.png")]
    for prefix in ("alpha", "lr_scale", "lr"):
        keys = sorted({k for r in records for k in r if k.startswith(prefix + "/")})
        if keys:
            written.append(plot_series(records, keys, out_dir / f"{prefix}_by_epoch.png"))
    return "\n".join(f"plot: {p}" for p in written)
