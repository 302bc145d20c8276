"""The objective seam: `(outputs, batch, context) -> named loss terms`; the engine sums and logs them."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..registry import OBJECTIVES


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class ObjectiveContext:
    """What an objective may need when it is built: head names, devices, a teacher loader."""

    head_names: list[str]
    num_classes: int
    device: torch.device
    label_smoothing: float = 0.0
    load_teacher: Callable[[], torch.nn.Module] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Objective:
    """Base: subclasses implement `__call__(out, batch) -> {term: scalar tensor}`."""

    def __call__(self, out, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def resolve_heads(heads: str | list[str], available: list[str], who: str) -> list[str]:
    """`"all"` → every head; otherwise check every named head exists."""
    if heads == "all":
        return list(available)
    names = [heads] if isinstance(heads, str) else list(heads)
    missing = [h for h in names if h not in available]
    if missing:
        raise ConfigError(f"{who}: unknown head(s) {missing}; the model has {available}")
    return names


def build_objective(name: str, params: dict[str, Any], ctx: ObjectiveContext) -> Objective:
    """Look up `name` in OBJECTIVES and build it, naming any unknown parameter."""
    cls = OBJECTIVES.get(name)
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p not in ("self", "ctx")]
    for key in params:
        if key not in valid:
            raise ConfigError(f"unknown parameter {key!r} for objective {name!r}; valid: {', '.join(valid)}")
    return cls(ctx, **params)
