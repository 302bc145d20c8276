"""Decorrelation of a multi-head classifier's heads (paper 004, sec. 2.3, Eq. 4; reference `train.py`, spec 004 §A.8)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext


def decorrelation_loss(logits: list[torch.Tensor], weight: float) -> torch.Tensor:
    """λ·Σ_h mean_{b,k} p̄_bk(log p̄_bk − log p_h,bk), p̄ = softmax(detached mean logits) (paper 004 Eq. 4; spec §A.8).

    The reference's `F.kl_div(log_softmax(z_h), log_softmax(z̄), reduction='mean', log_target=True)·λ` summed over
    heads (written out: PyTorch announces that `reduction='mean'` will become 'batchmean'): no temperature, mean
    over batch × classes. With one head z̄ = z₁, so the term is identically 0; it is
    returned as 0·Σz₁, whose gradient is exactly 0 (the general formula leaves float round-off in it)."""
    if not logits:
        raise ValueError("decorrelation_loss needs the logits of at least one head")
    if len(logits) == 1:
        return logits[0].float().sum() * 0.0
    mean = torch.stack([z.detach().float() for z in logits]).sum(0) / len(logits)
    log_target = F.log_softmax(mean, dim=1)
    target = log_target.exp()
    total = sum((target * (log_target - F.log_softmax(z.float(), dim=1))).mean() for z in logits)
    return weight * total


def sub_head_keys(head: str, logit_names: list[str]) -> list[str]:
    """The logit keys `<head>.<sub>` of a head's sub-heads (e.g. `ga.0` … `ga.4`), in the model's order."""
    return [k for k in logit_names if k.startswith(head + ".")]


@OBJECTIVES.register("decorrelation")
class Decorrelation(Objective):
    """Term `decorrelation/<head>` = decorrelation_loss over `head`'s sub-heads, λ = −0.8 (paper 004 Table 2, Fig. 5a).

    `head`: a head with sub-heads (`ga`, `ca_token`, `multi_fc`); None picks the model's only such head.
    λ < 0 pushes each head's prediction away from the heads' mean (the paper uses only λ ≤ 0); λ > 0 would
    pull it towards the mean (KD-like). A head with a single sub-head makes the term identically zero, so it
    is refused with the fix (more heads, or drop the objective)."""

    uses_labels = False  # reads no batch.y: may sit beside a composer such as mixmatch

    def __init__(self, ctx: ObjectiveContext, head: str | None = None, weight: float = -0.8) -> None:
        names = list(ctx.logit_names)
        with_subs = [h for h in ctx.head_names if sub_head_keys(h, names)]
        if head is None:
            if len(with_subs) != 1:
                raise ConfigError("objective decorrelation needs one head with sub-heads, e.g. heads=[ga]; the model "
                                  f"has {with_subs or 'none'} among {ctx.head_names}"
                                  + ("; set head=<name>" if with_subs else ""))
            head = with_subs[0]
        if head not in ctx.head_names:
            raise ConfigError(f"objective decorrelation: unknown head {head!r}; the model has {ctx.head_names}")
        self.keys = sub_head_keys(head, names)
        if len(self.keys) < 2:
            raise ConfigError(f"objective decorrelation: head {head!r} has {len(self.keys)} sub-head(s), so the term "
                              f"is identically zero; set {head}_count ≥ 2 or drop decorrelation from the objective")
        self.head, self.weight = head, float(weight)

    def term_names(self) -> list[str]:
        return [f"decorrelation/{self.head}"]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        return {f"decorrelation/{self.head}": decorrelation_loss([out.logits[k] for k in self.keys], self.weight)}
