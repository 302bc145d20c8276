"""Protocol overhead: the same 20 tiny runs through each executor vs called in a plain loop, in one run.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/executor_overhead.py [--runs 20] [--epochs 2]
     [--executors local,local:2,ray:2,slurm:2] [--json OUT.json]

The runs: one tiny synthetic config (4 classes, 8×8 images, width 1/16, 40 labels) with --runs different seeds.
Reference: `r18lab.train.run.execute` called on each, one after another, in this process (no folder checks, no
store, no executor), after one untimed warm-up run. Each executor (NAME:WORKERS) runs the same specs in fresh folders through the runner
(`runner.run` with a Plan: folder states, result records, the store merge) and is timed from the first spec
handed over to the last result (local's spawned workers start inside it). Engines start before the clock (Ray's local instance, 2 CPUs) and their start is
shown in its own column; `slurm` is submitit's local executor (one process per job, its own Python start).
Ratio = wall seconds ÷ the loop's; per-run overhead = (wall × workers − loop) ÷ runs, the seconds each run costs
beyond its training when the workers were busy all the time (negative: the workers' parallelism won).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from r18lab.config import build_config, parse_overrides  # noqa: E402
from r18lab.protocols import EXECUTORS, lowdata, runner  # noqa: E402

TINY = ["data.source=synthetic", "data.options={num_classes: 4, image_size: 8, n: 128}", "model.width=0.0625",
        "train.batch_size=32", "train.progress=none", "optim.lr=0.05", "schedule.name=constant"]


def specs(n: int, epochs: int, out: Path) -> list:
    settings = lowdata.LowDataSettings(labels=[40], seeds=list(range(n)), methods=["resnet18"])
    return lowdata.plan(settings, parse_overrides([*TINY, f"train.epochs={epochs}"]), out)


def loop(n: int, epochs: int, root: Path) -> float:
    import torch

    from r18lab.train.run import execute

    torch.set_num_threads(1)
    warm = specs(1, epochs, root / "warm-up")[0]  # this process's first run pays its imports and first calls: untimed
    execute(build_config(warm.config), warm.out_dir)
    todo = specs(n, epochs, root / "loop")
    tic = time.perf_counter()
    for s in todo:
        execute(build_config(s.config), s.out_dir)
    return time.perf_counter() - tic


def through(name: str, workers: int, n: int, epochs: int, root: Path) -> tuple[float, float]:
    """(engine start seconds, wall seconds of the runs) for one executor."""
    out = root / f"{name}-{workers}"
    options = {"cluster": "local", "folder": str(out / "slurm")} if name == "slurm" else {}
    tic = time.perf_counter()
    if name == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    executor = EXECUTORS.build(name, workers, str(out / "store.sqlite"), runner._run_one, options, out)
    start = time.perf_counter() - tic
    try:
        with executor:
            tic = time.perf_counter()
            failures = runner.run(runner.Plan(specs(n, epochs, out)), executor, out / "store.sqlite",
                                  log=lambda m: None).failures
            wall = time.perf_counter() - tic
    finally:
        if name == "ray":
            ray.shutdown()
    if failures:
        raise SystemExit(f"{name}: {len(failures)} runs failed, e.g. {next(iter(failures.values()))}")
    return start, wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--executors", default="local:1,local:2,ray:2,slurm:2", help="NAME:WORKERS, comma-separated")
    p.add_argument("--json")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="r18lab-overhead-") as tmp:
        root = Path(tmp)
        base = loop(a.runs, a.epochs, root)
        rows = [{"executor": "plain loop (train.run.execute)", "workers": 1, "start_s": 0.0, "wall_s": base}]
        for item in a.executors.split(","):
            name, _, workers = item.partition(":")
            start, wall = through(name, int(workers or 1), a.runs, a.epochs, root)
            rows.append({"executor": name, "workers": int(workers or 1), "start_s": start, "wall_s": wall})
    print(f"{a.runs} tiny runs ({a.epochs} epochs each), {os.cpu_count()} cores, OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}, Python {sys.version.split()[0]}\n")
    print("| executor | workers | engine start (s) | wall (s) | ratio to loop | overhead per run (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        r["ratio"] = r["wall_s"] / base
        r["per_run_s"] = (r["wall_s"] * r["workers"] - base) / a.runs
        print(f"| {r['executor']} | {r['workers']} | {r['start_s']:.1f} | {r['wall_s']:.1f} | {r['ratio']:.2f} | "
              f"{r['per_run_s']:+.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
