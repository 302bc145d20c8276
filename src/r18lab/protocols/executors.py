"""Executors run a wave of RunSpecs somewhere and yield a RunResult per spec as each finishes. `local` runs them
in this process (workers=1) or in a pool of spawned processes that die with this one, optionally packed onto the
visible GPUs (`gpus_per_run`). `ray` (executor_ray) and `slurm` (executor_slurm) register under their own names.
Each executor's options are a typed model (`Options`), set by the recipe key `executor: {name: ..., ...}`,
`executor.KEY=VALUE` overrides, or `--gpus-per-run`."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from abc import ABC, abstractmethod
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pydantic import field_validator

from ..config import Strict
from ..errors import ConfigError, R18Error
from ..registry import Registry
from .base import RunResult, validate_settings
from .lifeline import die_with_parent
from .spec import RunSpec

#: name → factory `(workers: int, store_path: str, task: Task, options: dict | None = None, workdir: Path | None
#: = None) -> Executor`; `options` are validated by the executor's `Options`, `workdir` is the protocol directory
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


class ExecutorOptions(Strict):
    """Options every executor takes. gpus_per_run: GPUs per run, a fraction in (0, 1] packs runs onto a GPU
    (0.25: four per GPU), a whole number gives each run that many; None: no GPU is asked for."""

    gpus_per_run: Optional[float] = None

    @field_validator("gpus_per_run")
    @classmethod
    def _fraction_or_whole(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not (0 < v <= 1 or (v > 1 and float(v).is_integer())):
            raise ValueError(f"--gpus-per-run must be a fraction in (0, 1] (0.25: four runs per GPU) or a whole "
                             f"number of GPUs, got {v:g}")
        return v


def executor_choice(flag: str | None, section: Any, gpus_per_run: float | None) -> tuple[str, dict[str, Any]]:
    """(executor name, its options) from `--executor` (wins), the recipe key `executor:` (a name, or a mapping
    with `name` and options; `executor.KEY=VALUE` overrides land there too) and `--gpus-per-run` (wins over the
    recipe's). Options under a `name` belong to that executor: a different `--executor` does not get them."""
    if section is None:
        section = {}
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        raise ConfigError(f"the recipe key executor must be a name ({', '.join(EXECUTORS.names())}) or a mapping "
                          f"with name and options, got {section!r}")
    options = dict(section)
    named = options.pop("name", None)
    name = flag or named or "local"
    EXECUTORS.get(name)  # unknown name: one line listing the choices
    if named is not None and name != named:
        options = {}
    if gpus_per_run is not None:
        options["gpus_per_run"] = gpus_per_run
    return name, options


class Executor(ABC):
    """Runs specs; `run` yields results as they finish, `close` stops whatever still runs (Ctrl-C)."""

    #: the executor's options (validated; unknown keys are one-line errors naming `executor.KEY`)
    Options: type[ExecutorOptions] = ExecutorOptions

    def __init__(self, workers: int, store_path: str, task: Task, options: dict[str, Any] | None = None,
                 workdir: Path | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"--workers must be a whole number of at least 1, got {workers!r}")
        self.options = validate_settings(self.Options, options or {}, prefix="executor")
        self.workers, self.store_path, self.task = workers, str(store_path), task
        self.workdir = Path(workdir) if workdir is not None else Path("runs")
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


def _init_worker(parent: int, gpu_slots: list[str] | None = None, counter: Any = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    die_with_parent(parent)
    if gpu_slots:  # before anything touches CUDA in this process: the k-th worker gets slot k (round-robin)
        with counter.get_lock():
            k, counter.value = counter.value, counter.value + 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_slots[k % len(gpu_slots)]


def gpu_slots(gpus: int, per_run: float) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each packed worker, round-robin over `gpus` devices: per_run 0.25 on 2 GPUs →
    0,1,0,1,0,1,0,1; per_run 2 on 4 GPUs → "0,1", "2,3"."""
    if per_run <= 1:
        return [str(i % gpus) for i in range(int(1 / per_run + 1e-9) * gpus)]
    n = int(per_run)
    return [",".join(str(j) for j in range(i * n, (i + 1) * n)) for i in range(gpus // n)]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """This machine: in this process for workers=1, else a pool of spawned processes (one thread share each).
    gpus_per_run packs the workers onto the visible GPUs by CUDA_VISIBLE_DEVICES, round-robin; --workers 1 then
    means one worker per slot (visible GPUs ÷ gpus_per_run), a larger --workers shares the slots. Asking for GPUs
    on a machine without CUDA is a one-line error: runs silently on the CPU would take far longer than planned."""

    def __init__(self, workers: int, store_path: str, task: Task, options: dict[str, Any] | None = None,
                 workdir: Path | None = None) -> None:
        super().__init__(workers, store_path, task, options, workdir)
        self._pool: ProcessPoolExecutor | None = None
        self._slots: list[str] = []
        per_run = self.options.gpus_per_run
        if per_run is not None:
            gpus = visible_gpus()
            self._slots = gpu_slots(gpus, per_run)
            if not self._slots:
                raise ConfigError(f"--gpus-per-run {per_run:g} needs {max(per_run, 1):g} CUDA GPU(s), this machine "
                                  f"has {gpus} visible; drop --gpus-per-run to run on the CPU, or use a GPU machine")
            if workers == 1:
                self.workers = len(self._slots)
                self.threads = threads_per_worker(self.workers)

    def run(self, specs: list[RunSpec]) -> Iterator[RunResult]:
        if self.workers == 1 and not self._slots:
            yield from self._run_here(specs)
            return
        if self._pool is None:
            ctx = mp.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                             initargs=(os.getpid(), self._slots, ctx.Value("i", 0)))
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
