"""An exponential moving average of the weights, evaluated and saved instead of the training weights (MixMatch,
Berthelot et al. 2019, sec. 4: "an exponential moving average of model parameters with a decay rate of 0.999";
reference YU1ut/MixMatch-pytorch `WeightEMA`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ...errors import ConfigError
from ...registry import HOOKS
from . import Hook


def ema_update(shadow: list[torch.Tensor], current: list[torch.Tensor], decay: float) -> None:
    """θ̄ ← d·θ̄ + (1 − d)·θ in place, for floating-point tensors; others (step counters) copied."""
    floats = [(s, c) for s, c in zip(shadow, current) if s.is_floating_point()]
    if floats:
        torch._foreach_lerp_([s for s, _ in floats], [c.detach() for _, c in floats], 1.0 - decay)
    for s, c in zip(shadow, current):
        if not s.is_floating_point():
            s.copy_(c)


@HOOKS.register("ema")
class WeightEMA(Hook):
    """Keeps θ̄ ← d·θ̄ + (1 − d)·θ after every optimizer step (d = `decay`, 0.999) over the model's whole state: its
    parameters and its floating-point buffers (batch-norm running statistics), as the reference's `WeightEMA` over
    `state_dict()` and timm's `ModelEmaV2`. Starts from the initial weights. Evaluation during and after training,
    model.safetensors (so `r18lab eval` and `export`) and the run's summary use θ̄; the checkpoints keep both, so a
    resumed run continues the same average. (The reference also multiplies the weights by 1 − 0.02·lr inside its
    EMA step: that is decoupled weight decay, here `optim.name=adamw` with `optim.weight_decay=0.02`.)"""

    def __init__(self, decay: float = 0.999) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ConfigError(f"hook ema: decay must lie in [0, 1), got {decay!r}; MixMatch uses 0.999")
        self.decay = float(decay)
        self.shadow: dict[str, torch.Tensor] | None = None
        self._live: list[torch.Tensor] | None = None  # the model's state tensors, in shadow order (read once)

    @property
    def weights_name(self) -> str:
        """What the run's summary says it evaluated and saved."""
        return f"ema(decay={self.decay:g})"

    def _start(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self._live is None:  # state_dict's tensors share the weights' storage, updated in place by each step
            state = model.state_dict()
            self._live = [state[k] for k in self.shadow]
        return self.shadow

    def on_fit_start(self, ctx) -> None:
        self.shadow = self._live = None
        self._start(ctx.model)

    def after_step(self, ctx, step: int) -> None:
        shadow = self._start(ctx.model)
        ema_update(list(shadow.values()), self._live, self.decay)

    @contextmanager
    def evaluation_weights(self, ctx) -> Iterator[None]:
        shadow = self._start(ctx.model)
        online = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        ctx.model.load_state_dict(shadow)
        try:
            yield
        finally:
            ctx.model.load_state_dict(online)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": dict(self.shadow or {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state.get("shadow") or {}
        self.shadow = {k: v.clone() for k, v in shadow.items()} or None
        self._live = None
