"""What a SLURM job of the `slurm` executor runs: one spec, as a submitit Checkpointable. On preemption or time-out
submitit calls `checkpoint`, which requeues the same run; it resumes from its folder (the engine's last epoch
checkpoint). Imports submitit: only executor_slurm imports this module, once submitit is known to be installed."""
from __future__ import annotations

import os

import submitit

from .base import RunResult
from .executors import Task, _timed
from .spec import RunSpec


class SlurmRun(submitit.helpers.Checkpointable):
    """`(spec) -> RunResult` in the driver's working directory (relative run folders and store mean the same)."""

    def __init__(self, cwd: str, task: Task, store_path: str, threads: int) -> None:
        self.cwd, self.task, self.store_path, self.threads = cwd, task, store_path, threads

    def __call__(self, spec: RunSpec) -> RunResult:
        os.chdir(self.cwd)
        return _timed(self.task, spec, self.store_path, self.threads)

    # checkpoint(spec) is Checkpointable's: resubmit this callable with the same spec. Nothing else needs saving:
    # the run's folder holds its state, and a requeued run resumes from it by run identity.
