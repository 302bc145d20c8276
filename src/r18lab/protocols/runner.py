"""Runs a protocol's waves through an executor: skips runs whose folder holds them finished (by run identity),
resumes interrupted ones, never touches a folder holding another run, and stops promptly on Ctrl-C.
Workers never open the SQLite store: each leaves a result record (result.json) in its run folder, and this
driver, the store's one writer, merges each record as its run's result arrives."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import Interrupted, R18Error
from .base import Protocol, RunContext
from .executors import EXECUTORS, Executor, threads_per_worker  # noqa: F401  (threads_per_worker: public here)
from .spec import RunSpec, folder_state, read_summary  # noqa: F401  (read_summary: public here)


def _run_one(spec: RunSpec, store_path: str, threads: int) -> tuple[str, dict[str, Any] | None, str]:
    """Train one spec in this process: resume this run's unfinished files, refuse a folder of another run.
    The run is recorded in its folder's result.json; `store_path` is not opened here (the driver writes it)."""
    import torch

    from ..config import build_config
    from ..results.records import RecordSink
    from ..train.run import execute

    torch.set_num_threads(threads)
    state = folder_state(spec)
    if state == "done":
        return spec.run_id, read_summary(spec), ""
    if state == "foreign":
        return spec.run_id, None, (f"{spec.out_dir} holds another configuration's run; move it away "
                                   "(nothing there was changed)")
    has_config = (spec.out_dir / "config.json").is_file()
    try:
        summary = execute(build_config(spec.config), spec.out_dir, resume=state == "partial" and has_config,
                          overwrite=state == "partial" and not has_config, run_id=spec.run_id,
                          store=RecordSink(spec.identity), protocol=spec.run_id.split("/")[0], tags=spec.tags)
    except R18Error as e:
        return spec.run_id, None, str(e)
    except Exception as e:  # one broken run must not end the others; its record already says failed
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


class Plan(Protocol):
    """A fixed list of runs, in dependency waves (teachers before their students)."""

    def __init__(self, specs: list[RunSpec], name: str = "plan", out: Path = Path(".")) -> None:
        self.specs, self.name, self.out = specs, name, out

    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        yield from dependency_waves(self.specs)


def _adopt(spec: RunSpec, store, log: Callable[[str], Any] = print) -> None:
    """A finished folder the store does not list as done (another store, or killed between the two writes)."""
    if not store.done(spec.run_id):
        _merge_record(spec, store, read_summary(spec) or {"status": "done"}, log)


def _merge_record(spec: RunSpec, store, summary: dict[str, Any] | None, log: Callable[[str], Any]) -> None:
    """Merge the run's result record into the store. A finished folder whose record is missing or stale (an
    older r18lab, or killed between summary.json and result.json) gets one written from its summary first."""
    from ..config import build_config, config_dict
    from ..results import records

    path = spec.out_dir / records.RECORD_FILE
    rec = None
    if path.is_file():
        try:
            rec = records.read_record(path)
        except R18Error as e:  # the run's files are fine; `r18lab runs collect` reports it again
            log(f"{spec.run_id}: result record not merged: {e}")
            return
        rec = rec if rec.run_id == spec.run_id else None  # another run's folder: not this run's record
    if (summary or {}).get("status") == "done" and (rec is None or rec.status != "done"):
        rec = records.summary_record(spec.run_id, spec.identity, summary or {},
                                     config=config_dict(build_config(spec.config)), out_dir=spec.out_dir,
                                     protocol=spec.run_id.split("/")[0], tags=spec.tags)
        try:
            records.write_record(rec, path)
        except R18Error as e:  # a read-only folder: the store still learns the run
            log(f"{spec.run_id}: {e}")
    if rec is not None:
        records.collect(store, [rec])


def run(protocol: Protocol, executor: Executor, store_path: str | Path,
        log: Callable[[str], Any] = print) -> RunContext:
    """Ask the protocol for waves until it stops; run each wave's unfinished runs on the executor.
    Ctrl-C cancels what is queued, stops the workers and raises errors.Interrupted."""
    from ..train.run import open_store

    store = open_store(store_path)
    ctx = RunContext()
    try:
        for wave in protocol.waves(ctx):
            _run_wave(wave, ctx, executor, store, log)
    except KeyboardInterrupt:
        executor.close(cancel=True)
        raise Interrupted("interrupted; rerun the same command to continue") from None
    return ctx


def _run_wave(wave: list[RunSpec], ctx: RunContext, executor: Executor, store, log) -> None:
    fresh = [s for s in wave if s.run_id not in ctx.specs]
    for s in wave:
        ctx.specs.setdefault(s.run_id, s)
    wave = list({s.run_id: s for s in fresh}.values())  # twins (identical configs) run once
    todo = []
    for s in wave:
        if folder_state(s) == "done":
            _adopt(s, store, log)
            ctx.done.add(s.run_id)
        else:
            todo.append(s)
    log(f"{len(wave) - len(todo)} of {len(wave)} runs already done; {len(todo)} to run "
        f"with {executor.workers} worker(s) × {executor.threads} thread(s)")
    ready = []
    for s in todo:  # a run whose teacher failed is not run; say so instead of dropping it silently
        failed = [d for d in s.depends if d in ctx.failures]
        if failed:
            ctx.failures[s.run_id] = f"not run: its teacher {failed[0]} failed"
            log(f"{s.run_id} skipped: its teacher {failed[0]} failed")
        else:
            ready.append(s)
    by_id = {s.run_id: s for s in ready}
    for i, res in enumerate(executor.run(ready) if ready else ()):
        log(f"[{i + 1}/{len(ready)}] {res.run_id} {'failed: ' + res.error if res.error else 'done'} "
            f"({res.seconds:.0f} s)")
        if res.run_id in by_id:  # this process is the store's one writer: merge the worker's record now
            _merge_record(by_id[res.run_id], store, res.summary, log)
        if res.error:
            ctx.failures[res.run_id] = res.error
        else:
            ctx.done.add(res.run_id)


def run_all(specs: list[RunSpec], store_path: str | Path, workers: int = 1, log: Callable[[str], Any] = print,
            executor: str = "local") -> dict[str, str]:
    """Run a fixed list of specs (dependencies first); returns run_id → error message for failures."""
    with EXECUTORS.build(executor, workers, str(store_path), _run_one) as ex:
        return run(Plan(specs), ex, store_path, log).failures
