"""Learning Loss for Active Learning's ranking loss (Yoo & Kweon 2019, eq. 2–3; paper 000 appendix A.4): term `llal`.

Used as `objective=[ce, llal]` with `model.heads=[main, llal]`: total = CE + λ·ranking, λ = `weight` (1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext


def ranking_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """mean_i max(0, −s_i·(l̂_i − l̂_j) + ξ) over pairs (i, j = B−1−i), i < B//2, s_i = +1 if l_i > l_j else −1
    (LLAL eq. 2; reference Mephisto405/Learning-Loss `LossPredLoss`: input − input.flip(0), first half).

    As the reference: each pair counted once (the batch is halved), a tie l_i = l_j counts as s = −1 (its
    2·sign(clamp(·, min=0)) − 1), targets detached; an odd batch leaves its middle sample unpaired; B < 2 gives 0."""
    half = len(predicted) // 2
    if half == 0:
        return predicted.float().sum() * 0.0
    diff = (predicted.float() - predicted.float().flip(0))[:half]
    target_diff = (target.detach().float() - target.detach().float().flip(0))[:half]
    sign = torch.where(target_diff > 0, 1.0, -1.0)
    return torch.clamp(margin - sign * diff, min=0).mean()


@OBJECTIVES.register("llal")
class LossPredictionRanking(Objective):
    """Term `llal` = weight·ranking_loss(l̂, l) with l̂ the `head`'s aux output `<head>.loss` and l the per-sample
    CE of the `target` head's logits (no label smoothing), detached (LLAL sec. 3.2: ξ = `margin` = 1, λ = `weight`
    = 1; paper 000 appendix A.4). The backbone stops receiving this term's gradient when the `llal_detach` hook
    says so (reference: after epoch 120 of 200)."""

    def __init__(self, ctx: ObjectiveContext, head: str = "llal", target: str = "main", margin: float = 1.0,
                 weight: float = 1.0) -> None:
        self.key = f"{head}.loss"
        if self.key not in ctx.aux_names:
            raise ConfigError(f"objective llal needs the model's {head!r} head (aux output {self.key!r}); add it: "
                              f"model.heads=[main, {head}]")
        available = ctx.logit_names or ctx.head_names
        if target not in available:
            raise ConfigError(f"objective llal: target head {target!r} is not among the model's logits {available}; "
                              "set target to the classifier head whose loss is predicted")
        for name, value in (("margin", margin), ("weight", weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"objective llal: {name} must be a number ≥ 0, got {value!r}")
        self.head, self.target, self.margin, self.weight = head, target, float(margin), float(weight)

    def term_names(self) -> list[str]:
        return ["llal"]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target = F.cross_entropy(out.logits[self.target].float(), batch.y, reduction="none")
        return {"llal": self.weight * ranking_loss(out.aux[self.key], target, self.margin)}
