"""The hook seam: hooks receive the engine's events and may change param groups (via `lr_scale`) or masks."""
from __future__ import annotations

import inspect
from typing import Any

from ..errors import ConfigError
from ..registry import HOOKS


class Hook:
    """Override any of these; `ctx` is the running Trainer (model, optimizer, config, log)."""

    def on_fit_start(self, ctx) -> None: ...
    def on_epoch_start(self, ctx, epoch: int) -> None: ...
    def after_step(self, ctx, step: int) -> None: ...
    def on_epoch_end(self, ctx, epoch: int, metrics: dict[str, Any]) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_hook(name: str, params: dict[str, Any]) -> Hook:
    cls = HOOKS.get(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params:
        if key not in valid:
            raise ConfigError(f"unknown parameter {key!r} for hook {name!r}; valid: {', '.join(valid)}")
    return cls(**params)
