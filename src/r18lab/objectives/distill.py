"""Distillation objectives: offline KD (Hinton et al. 2015), DML (Zhang et al. 2018), KDCL (Guo et al. 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import OBJECTIVES
from ..errors import ConfigError
from .base import Batch, Objective, ObjectiveContext


def kl_to_target(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)), mean over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(target_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD term T²·KL(teacher ‖ student) at temperature T (Hinton et al. 2015, sec. 2)."""
    return temperature ** 2 * kl_to_target(student_logits, teacher_logits.detach(), temperature)


def dml_losses(peer_logits: list[torch.Tensor]) -> list[torch.Tensor]:
    """DML: peer k gets mean_{j≠k} KL(p_j detached ‖ p_k) (Zhang et al. 2018, eq. 10 for K peers)."""
    k = len(peer_logits)
    return [sum(kl_to_target(peer_logits[i], peer_logits[j].detach()) for j in range(k) if j != i) / (k - 1)
            for i in range(k)]


def kdcl_losses(peer_logits: list[torch.Tensor], temperature: float = 2.0) -> list[torch.Tensor]:
    """KDCL-Naive: target = detached mean of peer logits; peer k gets T²·KL(target ‖ p_k) (Guo et al. 2020)."""
    target = torch.stack([z.detach().float() for z in peer_logits]).mean(0)
    return [temperature ** 2 * kl_to_target(z, target, temperature) for z in peer_logits]


@OBJECTIVES.register("kd")
class KnowledgeDistillation(Objective):
    """weight·T²·KL(teacher ‖ student) with a frozen teacher loaded from `teacher` (paper 000 baseline)."""

    def __init__(self, ctx: ObjectiveContext, head: str = "main", temperature: float = 4.0,
                 weight: float = 0.9) -> None:
        if ctx.load_teacher is None:
            raise ConfigError("objective kd needs a teacher: set teacher=PATH/model.safetensors")
        if head not in ctx.head_names:
            raise ConfigError(f"objective kd: unknown head {head!r}; the model has {ctx.head_names}")
        self.teacher = ctx.load_teacher().eval().requires_grad_(False)
        if getattr(self.teacher, "num_classes", ctx.num_classes) != ctx.num_classes:
            raise ConfigError(f"objective kd: the teacher has {self.teacher.num_classes} classes but this data has "
                              f"{ctx.num_classes}; set teacher= to a model trained on the same classes")
        self.head, self.temperature, self.weight = head, temperature, weight

    def __call__(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t = self.teacher(batch.x).logits["main"]
        return {"kd": self.weight * kd_loss(out.logits[self.head], t, self.temperature)}


def _peer_heads(ctx: ObjectiveContext, head: str, who: str) -> list[str]:
    keys = [head] + [k for k in ctx.head_names if k.startswith("peer") and k.endswith("/" + head)]
    if len(keys) < 2:
        raise ConfigError(f"objective {who} needs at least two peers: set model.peers=2")
    return keys


@OBJECTIVES.register("dml")
class MutualLearning(Objective):
    """DML: each peer's CE (from `ce`) plus weight·KL(other peers ‖ itself)."""

    def __init__(self, ctx: ObjectiveContext, head: str = "main", weight: float = 1.0) -> None:
        self.keys, self.weight = _peer_heads(ctx, head, "dml"), weight

    def __call__(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        losses = dml_losses([out.logits[k] for k in self.keys])
        return {f"dml/{k}": self.weight * v for k, v in zip(self.keys, losses)}


@OBJECTIVES.register("kdcl")
class CollaborativeLearning(Objective):
    """KDCL (simple variant): each peer's CE (from `ce`) plus weight·T²·KL(mean of peers ‖ itself), T = 2."""

    def __init__(self, ctx: ObjectiveContext, head: str = "main", temperature: float = 2.0,
                 weight: float = 1.0) -> None:
        self.keys, self.temperature, self.weight = _peer_heads(ctx, head, "kdcl"), temperature, weight

    def __call__(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        losses = kdcl_losses([out.logits[k] for k in self.keys], self.temperature)
        return {f"kdcl/{k}": self.weight * v for k, v in zip(self.keys, losses)}
