"""Executors run a wave of RunSpecs somewhere and yield a RunResult per spec as each finishes. `local` runs them
in this process (workers=1) or in a pool of spawned processes that die with this one. Ray or SLURM executors
register here under their own names."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from abc import ABC, abstractmethod
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator

from ..errors import ConfigError, R18Error
from ..registry import Registry
from .base import RunResult
from .lifeline import die_with_parent
from .spec import RunSpec

#: name → factory `(workers: int, store_path: str, task: Task) -> Executor`
EXECUTORS: Registry = Registry("executor")

#: runs one spec where it is called: (spec, store_path, threads) → (run_id, summary | None, error message)
Task = Callable[[RunSpec, str, int], "tuple[str, dict[str, Any] | None, str]"]


def threads_per_worker(workers: int) -> int:
    """Split the thread budget evenly over the workers (at least one thread each): the budget is
    OMP_NUM_THREADS when set, else the cores this process may run on."""
    try:
        budget = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        budget = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, budget // max(workers, 1))


class Executor(ABC):
    """Runs specs; `run` yields results as they finish, `close` stops whatever still runs (Ctrl-C)."""

    def __init__(self, workers: int, store_path: str, task: Task) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"--workers must be a whole number of at least 1, got {workers!r}")
        self.workers, self.store_path, self.task = workers, str(store_path), task
        self.threads = threads_per_worker(workers)

    @abstractmethod
    def run(self, specs: list[RunSpec]) -> Iterator[RunResult]:
        """Run every spec (independent of each other); yield each one's result when it finishes."""

    def close(self, cancel: bool = False) -> None:
        """Release the executor's resources; `cancel=True` stops running work now instead of waiting."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(cancel=exc_type is not None)


def _timed(task: Task, spec: RunSpec, store_path: str, threads: int) -> RunResult:
    tic = time.perf_counter()
    run_id, summary, err = task(spec, store_path, threads)
    return RunResult(run_id, summary, err, time.perf_counter() - tic)


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    die_with_parent(parent)


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """This machine: in this process for workers=1, else a pool of spawned processes (one thread share each)."""

    def __init__(self, workers: int, store_path: str, task: Task) -> None:
        super().__init__(workers, store_path, task)
        self._pool: ProcessPoolExecutor | None = None

    def run(self, specs: list[RunSpec]) -> Iterator[RunResult]:
        if self.workers == 1:
            yield from self._run_here(specs)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(os.getpid(),))
        futures = [self._pool.submit(_timed, self.task, s, self.store_path, self.threads) for s in specs]
        try:
            for fut in as_completed(futures):
                try:
                    yield fut.result()
                except BrokenProcessPool as e:  # a worker died (e.g. out of memory): the rest resume next time
                    self.close(cancel=True)
                    raise R18Error(f"a worker process died ({e}); rerun the same command to resume, "
                                   "perhaps with fewer --workers") from None
        finally:
            for fut in futures:  # left early (Ctrl-C, an error): nothing queued may start afterwards
                fut.cancel()

    def _run_here(self, specs: list[RunSpec]) -> Iterator[RunResult]:
        import torch

        caller_threads = torch.get_num_threads()  # runs in this process: give the caller its setting back
        try:
            for spec in specs:
                yield _timed(self.task, spec, self.store_path, self.threads)
        finally:
            torch.set_num_threads(caller_threads)

    def close(self, cancel: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if not cancel:
            pool.shutdown(wait=True)
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + 3.0
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
