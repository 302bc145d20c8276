"""The protocol seam: a protocol yields waves of RunSpecs and may read finished runs (through RunContext)
before it yields the next wave, e.g. an active-learning cycle that needs the previous cycle's model."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from .spec import RunSpec, read_summary


def validate_settings(model: type, data: Any, prefix: str = "protocol") -> Any:
    """`model.model_validate(data)` with a pydantic error turned into one line naming the key."""
    try:
        return model.model_validate(data)
    except Exception as e:  # pydantic ValidationError → one line
        errs = getattr(e, "errors", lambda: [{"loc": (), "msg": str(e)}])()
        loc = ".".join([prefix, *(str(x) for x in errs[0]["loc"])])
        raise ConfigError(f"invalid {loc!r}: {errs[0]['msg']}") from None


@dataclass
class RunResult:
    """What an executor hands back for one spec: its summary, or an error message (one line)."""

    run_id: str
    summary: dict[str, Any] | None
    error: str = ""
    seconds: float = 0.0


@dataclass
class RunContext:
    """What a protocol sees between waves: every spec yielded so far, and how each ended this invocation."""

    specs: dict[str, RunSpec] = field(default_factory=dict)  # run_id → spec, in yield order
    failures: dict[str, str] = field(default_factory=dict)  # run_id → one-line reason
    done: set[str] = field(default_factory=set)  # run_ids finished (now or by an earlier invocation)

    def summary(self, spec: RunSpec | str) -> dict[str, Any] | None:
        """The finished run's summary (None if it failed or has not run)."""
        s = self.specs[spec] if isinstance(spec, str) else spec
        return read_summary(s) if s.run_id in self.done else None

    def weights(self, spec: RunSpec | str) -> Path | None:
        """The finished run's model.safetensors (None if it failed or has not run)."""
        s = self.specs[spec] if isinstance(spec, str) else spec
        return s.out_dir / "model.safetensors" if s.run_id in self.done else None


class Protocol(ABC):
    """Orchestrates many runs. Registered in `registry.PROTOCOLS` as a factory `(name, tree, out) -> Protocol`:
    `tree` is the resolved recipe (its `protocol:` section holds the protocol's settings), `out` its folder."""

    name: str
    out: Path

    @abstractmethod
    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        """Yield lists of runs; the runner finishes each list before asking for the next, so a later wave may
        read `ctx.summary(...)` / `ctx.weights(...)` of an earlier one."""

    def report(self, ctx: RunContext, title: str) -> str:
        """Tables and plots from the finished runs (written under `out`); returns markdown for the terminal."""
        done = [s for s in ctx.specs.values() if s.run_id in ctx.done]
        return f"{len(done)} of {len(ctx.specs)} runs finished"
