"""`slurm`: the runs of a wave as a submitit job array on SLURM, at most --workers running at once
(slurm_array_parallelism), each job requeued on preemption or time-out and resuming from its folder. `cluster: local`
runs the same jobs as local processes (submitit's LocalExecutor, what the tests use). submitit is an optional extra
(`pip install 'r18lab[slurm]'`), imported only when this executor is built."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import Field

from ..errors import ConfigError
from .base import RunResult
from .executors import EXECUTORS, Executor, ExecutorOptions, Task
from .spec import RunSpec


class SlurmOptions(ExecutorOptions):
    #: slurm: submit with sbatch; local: run the jobs as processes here (tests, trying a recipe); None: slurm where
    #: SLURM's commands exist, else local (submitit's detection)
    cluster: Optional[Literal["slurm", "local"]] = None
    #: where submitit keeps its pickles and the jobs' logs; None: <protocol directory>/slurm
    folder: Optional[str] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    #: a job's time limit; a run still going then is requeued and resumes from its last checkpoint
    timeout_min: int = Field(240, ge=1)
    #: how often one run may be requeued (time-outs and preemptions) before it counts as failed
    max_requeues: int = Field(10, ge=0)
    #: CPUs (= torch threads) per run; None: this machine's thread budget ÷ --workers, at least 1
    cpus_per_run: Optional[int] = Field(None, ge=1)
    mem_gb: Optional[float] = Field(None, gt=0)
    #: shell lines run before each job (module load ..., source .venv/bin/activate)
    setup: list[str] = []


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'r18lab[slurm]'") from None
    return submitit


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """submitit job arrays; the run folders and the store must be on a file system the nodes share, and r18lab
    importable there by the same Python (`setup` may activate it)."""

    Options = SlurmOptions

    def __init__(self, workers: int, store_path: str, task: Task, options: dict[str, Any] | None = None,
                 workdir: Path | None = None) -> None:
        super().__init__(workers, store_path, task, options, workdir)
        o = self.options
        submitit = _import_submitit()
        if o.gpus_per_run is not None and not float(o.gpus_per_run).is_integer():
            raise ConfigError(f"SLURM allocates whole GPUs: --gpus-per-run {o.gpus_per_run:g} needs --executor local "
                              "(pack runs on one machine's GPUs), or a whole number with --executor slurm")
        if o.cpus_per_run is not None:
            self.threads = o.cpus_per_run
        folder = Path(o.folder) if o.folder else self.workdir / "slurm"
        try:
            self.ex = submitit.AutoExecutor(folder=folder, cluster=o.cluster, slurm_max_num_timeout=o.max_requeues,
                                            local_max_num_timeout=o.max_requeues)
        except RuntimeError as e:  # cluster=slurm where SLURM's commands are missing
            raise ConfigError(f"executor.cluster=slurm, but this machine has no SLURM ({_one_line(e)}); submit from a "
                              "login node, or set executor.cluster=local to run the jobs here") from None
        params: dict[str, Any] = {"name": "r18lab", "timeout_min": o.timeout_min, "cpus_per_task": self.threads,
                                  "tasks_per_node": 1, "nodes": 1, "slurm_array_parallelism": workers}
        if o.gpus_per_run:
            params["gpus_per_node"] = int(o.gpus_per_run)
        if o.mem_gb is not None:
            params["mem_gb"] = o.mem_gb
        if o.setup:
            params["slurm_setup" if self.ex.cluster == "slurm" else "local_setup"] = list(o.setup)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(o, key) is not None:
                params[f"slurm_{key}"] = getattr(o, key)
        try:
            self.ex.update_parameters(**params)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"submitit refused the executor options ({_one_line(e)}); fix executor.* in the recipe") from None
        self._jobs: dict[Any, str] = {}  # running job → run_id

    @property
    def cluster(self) -> str:
        return self.ex.cluster

    def run(self, specs: list[RunSpec]) -> Iterator[RunResult]:
        from .slurm_job import SlurmRun

        fn = SlurmRun(os.getcwd(), self.task, self.store_path, self.threads)
        queue: list[RunSpec] = []
        if self.cluster == "slurm":  # one array: SLURM itself keeps at most --workers running
            self._jobs.update((job, s.run_id) for job, s in zip(self.ex.map_array(fn, specs), specs))
        else:  # local processes: the same cap, kept here
            queue = list(reversed(specs))
        poll = 2.0 if self.cluster == "slurm" else 0.2
        try:
            while queue or self._jobs:
                while queue and len(self._jobs) < self.workers:
                    spec = queue.pop()
                    self._jobs[self.ex.submit(fn, spec)] = spec.run_id
                finished = [job for job in self._jobs if job.done()]
                if not finished:
                    time.sleep(poll)
                for job in finished:
                    yield self._result(job, self._jobs.pop(job))
        finally:
            self._cancel()  # left early (Ctrl-C, an error): nothing queued may run afterwards

    def _result(self, job: Any, run_id: str) -> RunResult:
        try:
            return job.result()
        except Exception as e:  # killed, out of memory, requeued too often: the run resumes on the next invocation
            return RunResult(run_id, None, f"job {job.job_id} ended without a result ({_one_line(e)}); its log is "
                                           f"{job.paths.stderr}; rerun the same command to resume")

    def _cancel(self) -> None:
        for job in list(self._jobs):
            try:
                job.cancel(check=False)
            except Exception:  # already gone
                pass
        self._jobs.clear()

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self._cancel()
