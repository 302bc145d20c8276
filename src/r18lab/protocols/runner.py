"""Executes run specifications: skips runs the store marks done, resumes interrupted ones, optional process pool."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..errors import R18Error
from .lowdata import RunSpec


def threads_per_worker(workers: int) -> int:
    """Split the machine's cores evenly over the workers (at least one thread each)."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def _run_one(spec: RunSpec, store_path: str, threads: int) -> tuple[str, dict[str, Any] | None, str]:
    import torch

    from ..config import build_config
    from ..train.run import execute, open_store

    torch.set_num_threads(threads)
    store = open_store(store_path)
    cfg = build_config(spec.config)
    resume = (spec.out_dir / "checkpoint" / "state.json").is_file()
    try:
        summary = execute(cfg, spec.out_dir, resume=resume, run_id=spec.run_id, store=store,
                          protocol=spec.run_id.split("/")[0], tags=spec.tags)
    except R18Error as e:
        return spec.run_id, None, str(e)
    return spec.run_id, summary, ""


def is_done(spec: RunSpec, store) -> bool:
    return store.done(spec.run_id) and (spec.out_dir / "summary.json").is_file()


def run_all(specs: list[RunSpec], store_path: str | Path, workers: int = 1, log=print) -> dict[str, str]:
    """Run every spec not yet done (dependencies first); returns run_id → error message for failures."""
    from ..train.run import open_store

    store = open_store(store_path)
    todo = [s for s in specs if not is_done(s, store)]
    log(f"{len(specs) - len(todo)} of {len(specs)} runs already done; {len(todo)} to run "
        f"with {workers} worker(s) × {threads_per_worker(workers)} thread(s)")
    failures: dict[str, str] = {}
    waves = [[s for s in todo if not s.depends], [s for s in todo if s.depends]]
    for wave in waves:
        wave = [s for s in wave if not any(d in failures for d in s.depends)]
        if workers <= 1:
            for i, spec in enumerate(wave):
                tic = time.perf_counter()
                run_id, _summary, err = _run_one(spec, str(store_path), threads_per_worker(1))
                log(f"[{i + 1}/{len(wave)}] {run_id} {'failed: ' + err if err else 'done'} "
                    f"({time.perf_counter() - tic:.0f} s)")
                if err:
                    failures[run_id] = err
            continue
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, s, str(store_path), threads_per_worker(workers)) for s in wave]
            for i, fut in enumerate(as_completed(futures)):
                run_id, _summary, err = fut.result()
                log(f"[{i + 1}/{len(wave)}] {run_id} {'failed: ' + err if err else 'done'}")
                if err:
                    failures[run_id] = err
    return failures


def read_summary(spec: RunSpec) -> dict[str, Any] | None:
    path = spec.out_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
