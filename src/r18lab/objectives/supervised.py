"""Cross-entropy on one or more heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext, resolve_heads


def ce_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 − ε)·(−log p_y) + ε·mean_k(−log p_k), mean over the batch (label smoothing: Szegedy et al. 2016, sec. 7)."""
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


@OBJECTIVES.register("ce")
class CrossEntropy(Objective):
    """Σ_h w·CE(logits_h, y) over the chosen heads (default: every head, as OJKD's CE(fr) + CE(main)).

    `label_smoothing` defaults to the run's `train.label_smoothing`; one term `ce/<head>` per head."""

    def __init__(self, ctx: ObjectiveContext, heads: str | list[str] = "all", weight: float = 1.0,
                 label_smoothing: float | None = None) -> None:
        self.heads = resolve_heads(heads, ctx.head_names, "objective ce")
        self.weight = float(weight)
        self.smoothing = float(ctx.label_smoothing if label_smoothing is None else label_smoothing)
        if not 0.0 <= self.smoothing <= 1.0:
            raise ConfigError(f"objective ce: label_smoothing must lie in [0, 1], got {self.smoothing}")

    def term_names(self) -> list[str]:
        return [f"ce/{h}" for h in self.heads]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        return {f"ce/{h}": self.weight * ce_loss(out.logits[h], batch.y, self.smoothing) for h in self.heads}
