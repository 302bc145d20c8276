"""Cross-entropy on one or more heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext, resolve_heads


@OBJECTIVES.register("ce")
class CrossEntropy(Objective):
    """Σ_h w·CE(logits_h, y) over the chosen heads (default: every head, as OJKD's CE(fr) + CE(main))."""

    def __init__(self, ctx: ObjectiveContext, heads: str | list[str] = "all", weight: float = 1.0,
                 label_smoothing: float | None = None) -> None:
        self.heads = resolve_heads(heads, ctx.head_names, "objective ce")
        self.weight = weight
        self.smoothing = ctx.label_smoothing if label_smoothing is None else label_smoothing

    def __call__(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        return {f"ce/{h}": self.weight * F.cross_entropy(out.logits[h].float(), batch.y,
                                                         label_smoothing=self.smoothing)
                for h in self.heads}
