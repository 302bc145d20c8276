"""Protocols (many runs: waves of RunSpecs) and the executors that run them; importing this registers them."""
from ..registry import PROTOCOLS
from . import lowdata  # noqa: F401  (registers lowdata, compare)
from . import kdgrid  # noqa: F401
from . import pai  # noqa: F401
from . import linearized  # noqa: F401
from . import similarity  # noqa: F401
from . import consolidate  # noqa: F401
from . import active  # noqa: F401
from .base import Protocol, RunContext, RunResult
from .executors import EXECUTORS, Executor
from . import executor_ray, executor_slurm  # noqa: F401  (register ray, slurm; neither imports its engine yet)
from .spec import RunSpec

__all__ = ["EXECUTORS", "PROTOCOLS", "Executor", "Protocol", "RunContext", "RunResult", "RunSpec"]
