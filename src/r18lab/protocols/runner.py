"""Executes run specifications: skips runs the store marks done, resumes interrupted ones, optional process pool."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ..errors import R18Error
from .lowdata import RunSpec


def threads_per_worker(workers: int) -> int:
    """Split the thread budget evenly over the workers (at least one thread each): the budget is
    OMP_NUM_THREADS when set, else the cores this process may run on."""
    try:
        budget = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        budget = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, budget // max(workers, 1))


def same_config(spec: RunSpec) -> bool:
    """True if spec.out_dir was written by this spec's config (its config.json), so its checkpoint and
    summary belong to this run; False for a folder left by a run of the same method/labels/seed with other
    options (an earlier invocation with other overrides), whose files must be neither resumed nor reported."""
    try:
        return json.loads((spec.out_dir / "config.json").read_text()) == spec.config
    except (OSError, ValueError):
        return False


def _run_one(spec: RunSpec, store_path: str, threads: int) -> tuple[str, dict[str, Any] | None, str]:
    import torch

    from ..config import build_config
    from ..train.run import execute, open_store

    torch.set_num_threads(threads)
    store = open_store(store_path)
    cfg = build_config(spec.config)
    resume = (spec.out_dir / "checkpoint" / "state.json").is_file() and same_config(spec)
    if not resume:  # files of another config (or of nothing resumable) in this folder: start clean
        shutil.rmtree(spec.out_dir / "checkpoint", ignore_errors=True)
        (spec.out_dir / "summary.json").unlink(missing_ok=True)
    try:
        summary = execute(cfg, spec.out_dir, resume=resume, run_id=spec.run_id, store=store,
                          protocol=spec.run_id.split("/")[0], tags=spec.tags)
    except R18Error as e:
        return spec.run_id, None, str(e)
    except Exception as e:  # one broken run must not end the others; the store already says failed
        return spec.run_id, None, f"{type(e).__name__}: {e}"
    return spec.run_id, summary, ""


def dependency_waves(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """Group runs by dependency depth: wave k holds the runs whose teachers are all in waves < k."""
    by_id = {s.run_id: s for s in specs}
    depth: dict[str, int] = {}

    def level(run_id: str) -> int:
        if run_id not in depth:
            deps = by_id[run_id].depends if run_id in by_id else []
            depth[run_id] = 1 + max((level(d) for d in deps), default=-1) if run_id in by_id else -1
        return depth[run_id]

    waves: list[list[RunSpec]] = []
    for s in specs:
        k = level(s.run_id)
        waves.extend([] for _ in range(k + 1 - len(waves)))
        waves[k].append(s)
    return waves


def is_done(spec: RunSpec, store) -> bool:
    return store.done(spec.run_id) and (spec.out_dir / "summary.json").is_file() and same_config(spec)


def run_all(specs: list[RunSpec], store_path: str | Path, workers: int = 1, log=print) -> dict[str, str]:
    """Run every spec not yet done (dependencies first); returns run_id → error message for failures."""
    from ..train.run import open_store

    store = open_store(store_path)
    todo = list({s.run_id: s for s in specs if not is_done(s, store)}.values())  # twins run once
    log(f"{len(specs) - len(todo)} of {len(specs)} runs already done; {len(todo)} to run "
        f"with {workers} worker(s) × {threads_per_worker(workers)} thread(s)")
    failures: dict[str, str] = {}
    waves = dependency_waves(todo)
    for wave in waves:
        for s in wave:  # a run whose teacher failed is not run; say so instead of dropping it silently
            failed = [d for d in s.depends if d in failures]
            if failed:
                failures[s.run_id] = f"not run: its teacher {failed[0]} failed"
                log(f"{s.run_id} skipped: its teacher {failed[0]} failed")
        wave = [s for s in wave if s.run_id not in failures]
        if workers <= 1:
            import torch

            caller_threads = torch.get_num_threads()  # runs in this process: give the caller its setting back
            try:
                for i, spec in enumerate(wave):
                    tic = time.perf_counter()
                    run_id, _summary, err = _run_one(spec, str(store_path), threads_per_worker(1))
                    log(f"[{i + 1}/{len(wave)}] {run_id} {'failed: ' + err if err else 'done'} "
                        f"({time.perf_counter() - tic:.0f} s)")
                    if err:
                        failures[run_id] = err
            finally:
                torch.set_num_threads(caller_threads)
            continue
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, s, str(store_path), threads_per_worker(workers)) for s in wave]
            for i, fut in enumerate(as_completed(futures)):
                try:
                    run_id, _summary, err = fut.result()
                except BrokenProcessPool as e:  # a worker died (e.g. out of memory): the rest resume next time
                    raise R18Error(f"a worker process died ({e}); rerun the same command to resume, "
                                   "perhaps with fewer --workers") from None
                log(f"[{i + 1}/{len(wave)}] {run_id} {'failed: ' + err if err else 'done'}")
                if err:
                    failures[run_id] = err
    return failures


def read_summary(spec: RunSpec) -> dict[str, Any] | None:
    path = spec.out_dir / "summary.json"
    if not path.is_file() or not same_config(spec):
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
