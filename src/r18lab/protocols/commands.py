"""`r18lab protocol NAME CONFIG`: plan the runs, execute what is not done, write the report."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import lowdata
from .report import collect_rows, write_report
from .runner import run_all


def run_protocol(a: argparse.Namespace) -> int:
    from ..train.run import default_store_path

    settings, base = lowdata.load_protocol(a.config, a.overrides, a.scale)
    out = Path(a.out) if a.out else Path("runs") / f"{a.name}-{Path(a.config).stem}" + (f"-{a.scale}" if a.scale else "")
    specs = lowdata.plan(settings, base, out, protocol=a.name)
    store = a.store or str(default_store_path())
    tic = time.perf_counter()
    failures = run_all(specs, store, a.workers, log=lambda s: print(s, file=sys.stderr, flush=True))
    rows = collect_rows(specs, settings)
    print(write_report(rows, out, f"{a.name} protocol: {Path(a.config).stem}" + (f" ({a.scale})" if a.scale else "")))
    print(f"wall time {time.perf_counter() - tic:.0f} s; protocol directory: {out}")
    for run_id, err in failures.items():
        print(f"error: run {run_id} failed: {err}", file=sys.stderr)
    return 1 if failures else 0
