"""LLAL's late detaching (Yoo & Kweon 2019, sec. 4.1; reference Mephisto405/Learning-Loss `train_epoch`): after
epoch 120 of 200 the loss-prediction module's stage inputs are detached, so its ranking loss stops shaping the
backbone."""
from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ...models.llal import LossPredictionHead
from ...registry import HOOKS
from . import Hook

#: the reference's epoch_loss = 120 of its 200 epochs (LLAL sec. 4.1; paper 000 appendix A.4)
DEFAULT_FRACTION = 120 / 200


def default_detach_epoch(epochs: int) -> int:
    """round(0.6·epochs): the reference's 120 of 200 epochs, scaled to the run's length (LLAL sec. 4.1)."""
    return round(DEFAULT_FRACTION * epochs)


def detached(epoch: int, threshold: int) -> bool:
    """Whether 0-based `epoch` trains with detached stage inputs: epoch > threshold (the reference's
    `if epoch > epoch_loss` with epoch 0-based, so 200 epochs and threshold 120 detach epochs 121..199)."""
    return epoch > threshold


@HOOKS.register("llal_detach")
class LLALDetach(Hook):
    """Sets every `llal` head's `detach_stages` at each epoch start: true while the 0-based epoch > `epoch`
    (default round(0.6·train.epochs); 120 for 200 epochs as the reference). Stateless: a resumed run recomputes it
    from the epoch; each epoch's record gets `llal/detached` (0 or 1)."""

    def __init__(self, epoch: int | None = None) -> None:
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ConfigError(f"llal_detach epoch must be a whole number ≥ 0 (0-based; detached after it) or null "
                              f"(0.6·train.epochs), got {epoch!r}")
        self.epoch = epoch
        self._state = False

    def _heads(self, ctx) -> list[LossPredictionHead]:
        heads = [m for m in ctx.model.modules() if isinstance(m, LossPredictionHead)]
        if not heads:
            raise ConfigError("hook llal_detach needs a llal head; add it: model.heads=[main, llal]")
        return heads

    def threshold(self, epochs: int) -> int:
        """The last 0-based epoch trained without detaching."""
        return default_detach_epoch(epochs) if self.epoch is None else self.epoch

    def on_epoch_start(self, ctx, epoch: int) -> None:
        self._state = detached(epoch, self.threshold(ctx.cfg.train.epochs))
        for head in self._heads(ctx):
            head.detach_stages = self._state

    def on_epoch_end(self, ctx, epoch: int, metrics: dict[str, Any]) -> None:
        metrics["llal/detached"] = float(self._state)
