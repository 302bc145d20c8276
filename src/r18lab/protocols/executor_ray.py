"""`ray`: one Ray task per run (num_cpus = threads, num_gpus = gpus_per_run) on a local Ray instance or the cluster
named by `executor.address` / RAY_ADDRESS; at most --workers tasks in flight, results as each finishes (ray.wait).
Ray is an optional extra (`pip install 'r18lab[ray]'`), imported only when this executor is built."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

from pydantic import Field

from ..errors import ConfigError
from .base import RunResult
from .executors import EXECUTORS, Executor, ExecutorOptions, Task, _timed
from .spec import RunSpec


class RayOptions(ExecutorOptions):
    #: the cluster: host:port of its head (ray start --head), ray://host:10001 (Ray Client) or auto; None: RAY_ADDRESS,
    #: else a Ray instance started on this machine for the protocol and stopped after it
    address: Optional[str] = None
    #: CPUs (= torch threads) per run; None: this machine's thread budget ÷ --workers, at least 1
    cpus_per_run: Optional[int] = Field(None, ge=1)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'r18lab[ray]'") from None
    return ray


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """A host:port (or ray://host:port) that accepts no TCP connection: one line naming it, before Ray retries."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ConfigError(f"RAY_ADDRESS {address!r} is not host:port, ray://host:port or auto; set it to the head "
                          "node's address (ray start --head prints it)")
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as e:
        raise ConfigError(f"the Ray cluster at {address} (RAY_ADDRESS / executor.address) is unreachable "
                          f"({e.strerror or e}); start it with `ray start --head` or unset RAY_ADDRESS to run on a "
                          "local Ray instance") from None


def _run_in(cwd: str, task: Task, spec: RunSpec, store_path: str, threads: int) -> RunResult:
    """On the Ray worker: relative paths (run folders, teachers, the store) mean what they mean to the driver."""
    os.chdir(cwd)
    return _timed(task, spec, store_path, threads)


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks with CPU/GPU resources per run; a task lost with its node is retried by Ray and resumes from its
    folder (on a cluster, the run folders and the store must be on a file system every node mounts at one path)."""

    Options = RayOptions

    def __init__(self, workers: int, store_path: str, task: Task, options: dict[str, Any] | None = None,
                 workdir: Path | None = None) -> None:
        super().__init__(workers, store_path, task, options, workdir)
        self.ray = _import_ray()
        if self.options.cpus_per_run is not None:
            self.threads = self.options.cpus_per_run
        self._started = False
        if not self.ray.is_initialized():
            address = self.options.address or os.environ.get("RAY_ADDRESS") or None
            if address:
                _check_reachable(address)
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False,
                              logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise ConfigError(f"cannot connect to {where} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                  "check RAY_ADDRESS / executor.address") from None
            self._started = True
        gpus = self.options.gpus_per_run or 0
        self._remote = self.ray.remote(_run_in).options(num_cpus=self.threads, num_gpus=gpus)
        self._pending: dict[Any, str] = {}

    def run(self, specs: list[RunSpec]) -> Iterator[RunResult]:
        ray, cwd = self.ray, os.getcwd()
        queue = list(reversed(specs))
        try:
            while queue or self._pending:
                while queue and len(self._pending) < self.workers:
                    spec = queue.pop()
                    self._pending[self._remote.remote(cwd, self.task, spec, self.store_path, self.threads)] = spec.run_id
                (ref,), _ = ray.wait(list(self._pending), num_returns=1)
                run_id = self._pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died, the node was lost, or Ray cancelled it
                    first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                    yield RunResult(run_id, None, f"Ray task failed ({type(e).__name__}: {first}); "
                                                  "rerun the same command to resume")
        finally:
            self._cancel()  # left early (Ctrl-C, an error): nothing queued may run afterwards

    def _cancel(self) -> None:
        for ref in list(self._pending):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished or its worker gone
                pass
        self._pending.clear()

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self._cancel()
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False
