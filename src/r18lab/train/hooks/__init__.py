"""The hook seam: hooks receive the engine's events and may change param groups (via `lr_scale`), gradients or
masks. Every module of this package is imported here, so adding a hook is one decorated class
(`@HOOKS.register("name")`) in one file of this folder; the engine imports no hook by name."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from contextlib import nullcontext
from typing import Any, ContextManager

from ...errors import ConfigError
from ...registry import HOOKS


class Hook:
    """Override any event; `ctx` is the running Trainer (model, optimizer, cfg, device, log, epoch).

    Order within a step: forward, objectives, backward, `before_step` (gradients are there: edit or read
    them), optimizer step, `after_step` (weights are updated: apply masks). `state_dict` may hold tensors
    (at any depth of dicts/lists); they are checkpointed in safetensors, the rest as JSON.
    """

    def on_fit_start(self, ctx) -> None: ...
    def on_epoch_start(self, ctx, epoch: int) -> None: ...
    def before_step(self, ctx, step: int) -> None: ...
    def after_step(self, ctx, step: int) -> None: ...
    def on_epoch_end(self, ctx, epoch: int, metrics: dict[str, Any]) -> None: ...
    def evaluation_weights(self, ctx) -> ContextManager:
        """A context in which `ctx.model` holds the weights to evaluate and save (e.g. an EMA of them); the training
        weights are back when it exits. Evaluation, model.safetensors (and so `eval`, `export`) use it."""
        return nullcontext()
    def state_dict(self) -> dict[str, Any]:
        return {}
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def overrides(hook: Hook, event: str) -> bool:
    """True if `hook` implements `event` (the engine calls only those, keeping the step loop lean)."""
    return getattr(type(hook), event) is not getattr(Hook, event)


def build_hook(name: str, params: dict[str, Any]) -> Hook:
    cls = HOOKS.get(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params:
        if key not in valid:
            raise ConfigError(f"unknown parameter {key!r} for hook {name!r}; valid: {', '.join(valid)}")
    return cls(**params)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
