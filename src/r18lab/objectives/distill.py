"""Distillation objectives: offline KD (Hinton et al. 2015), DML (Zhang et al. 2018), KDCL (Guo et al. 2020)."""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.io import renormalize
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext
from .teacher import load_frozen_teacher


def kl_to_target(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) = Σ_k p_t,k·(log p_t,k − log p_s,k), mean over the batch ("batchmean")."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(target_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD term T²·KL(teacher ‖ student) at temperature T (Hinton et al. 2015, sec. 2)."""
    return temperature ** 2 * kl_to_target(student_logits, teacher_logits.detach(), temperature)


def kd_loss_elementwise_mean(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             temperature: float) -> torch.Tensor:
    """T²·mean over batch×classes of p_t·(log p_t − log p_s) = T²·KL/C: old `kl_div`'s default, as in AT/Moonshine (spec 003 §8.2)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    return temperature ** 2 * (log_p_t.exp() * (log_p_t - log_p_s)).mean()


#: the `kd` objective's `reduction` choices: the KD term as a function of (student logits, teacher logits, T)
KD_REDUCTIONS = {"batchmean": kd_loss, "elementwise_mean": kd_loss_elementwise_mean}


def moonshine_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """kl_div(log_softmax(z_s/T), softmax(z_t/T); elementwise mean)·2αT² + (1 − α)·CE(z_s, y) (AT/Moonshine `distillation`, spec 003 §8.2)."""
    ce = F.cross_entropy(student_logits.float(), y)
    return 2 * alpha * kd_loss_elementwise_mean(student_logits, teacher_logits, temperature) + (1 - alpha) * ce


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                   temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """(1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) (Hinton et al. 2015, sec. 2; T = 4, α = 0.9 by convention)."""
    ce = F.cross_entropy(student_logits.float(), y)
    return (1 - alpha) * ce + alpha * kd_loss(student_logits, teacher_logits, temperature)


def dml_losses(peer_logits: list[torch.Tensor]) -> list[torch.Tensor]:
    """DML: peer k gets mean_{j≠k} KL(p_j detached ‖ p_k) (Zhang et al. 2018, eq. 10 for K peers)."""
    k = len(peer_logits)
    return [sum(kl_to_target(peer_logits[i], peer_logits[j].detach()) for j in range(k) if j != i) / (k - 1)
            for i in range(k)]


def kdcl_losses(peer_logits: list[torch.Tensor], temperature: float = 2.0) -> list[torch.Tensor]:
    """KDCL-Naive: target = detached mean of peer logits; peer k gets T²·KL(target ‖ p_k) (Guo et al. 2020)."""
    target = torch.stack([z.detach().float() for z in peer_logits]).mean(0)
    return [temperature ** 2 * kl_to_target(z, target, temperature) for z in peer_logits]


def _positive_temperature(temperature: float, who: str) -> float:
    if not float(temperature) > 0:
        raise ConfigError(f"objective {who}: temperature must be > 0, got {temperature}")
    return float(temperature)


@OBJECTIVES.register("kd")
class KnowledgeDistillation(Objective):
    """Offline KD from a frozen teacher: term `kd` = weight·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) (Hinton et al. 2015, sec. 2).

    The CE/KD mix is set by the objective list, not here: `objective=[ce, kd]` (the `kd` method of paper 000's
    comparisons) is 1·CE + 0.9·T²·KL at T = 4; Hinton's weighted average (1 − α)·CE + α·T²·KL with α = 0.9,
    T = 4 is `[{name: ce, weight: 0.1}, {name: kd, weight: 0.9, temperature: 4}]` (method `kd-hinton`).
    Paper 000 states only "KD [Hinton et al. 2015]" with teacher ResNet50, student ResNet18 (sec. 3.1,
    "Comparisons with Knowledge Distillation baselines") and "cross-entropy loss as supervision" (sec. 3,
    "Training details"); App. A.1 / Table 1 list no KD setting. It is silent on T, on the KD weight and on the
    CE/KD mix, so T = 4 and 0.9 are assumed (the attention-transfer convention that specs/003-kd-residual.md
    also assumes). Hinton et al. 2015, sec. 2, use a weighted average of
    the soft-target and hard-target objectives with a considerably lower weight on the hard one, the soft
    term multiplied by T².

    `teacher` is a weights file whose metadata carries its architecture and preprocessing; the teacher is rebuilt
    from it, set to eval mode with requires_grad False (never trained, never in the optimizer: an objective
    is not a module), and fed the student's augmented view re-normalised with its own stored preprocessing.
    `teacher_head` picks the teacher's logits, `head` the student's. Several teachers: one `kd` entry each,
    with distinct `tag`s (terms `kd`, `kd:t2`, ...).

    `reduction` is the KL's form: `batchmean` (default, Hinton: T²·KL summed over the classes, mean over the
    batch; `kd_loss`) or `elementwise_mean` (old PyTorch `kl_div`'s default, used by the attention-transfer /
    Moonshine code that paper 003's WRNs come from: the same divided by the number of classes C;
    `kd_loss_elementwise_mean`; spec 003 §8.2). `weight` multiplies either. Moonshine's
    `kl_div(log_softmax(z_s/T), softmax(z_t/T))·2αT² + (1 − α)·CE` (`moonshine_kd_loss`) is exactly
    `[{name: ce, weight: 1 − α}, {name: kd, weight: 2α, reduction: elementwise_mean, temperature: T}]`,
    e.g. α = 0.9, T = 4: ce weight 0.1, kd weight 1.8 (an effective 2αT²/C on the KL instead of αT²).

    The generic `until_epoch` = N of every objective applies KD during the first N epochs only (0-based epoch
    < N); afterwards the term `kd` is a constant 0 and the teacher is not run (spec 003 T5, "KD for only the
    first 20 % of epochs, then CE": pair it with `{name: ce, from_epoch: N, tag: late}` so CE gets full weight)."""

    uses_labels = False  # reads no batch.y: may sit beside a composer such as mixmatch

    def __init__(self, ctx: ObjectiveContext, teacher: str | None = None, teacher_head: str = "main",
                 head: str = "main", temperature: float = 4.0, weight: float = 0.9,
                 reduction: str = "batchmean") -> None:
        if reduction not in KD_REDUCTIONS:
            raise ConfigError(f"objective kd: unknown reduction {reduction!r}; choose one of "
                              f"{', '.join(KD_REDUCTIONS)}")
        self.reduction = reduction
        self._kd = KD_REDUCTIONS[reduction]
        if head not in ctx.head_names:
            raise ConfigError(f"objective kd: unknown head {head!r}; the model has {ctx.head_names}")
        self.head, self.teacher_head = head, teacher_head
        self.temperature = _positive_temperature(temperature, "kd")
        self.weight = float(weight)
        frozen = load_frozen_teacher(ctx, teacher, "kd")
        self.teacher_path, self.teacher_identity = frozen.path, frozen.identity
        self.teacher = frozen.model
        self.student_preprocessing, self.teacher_preprocessing = frozen.student_preprocessing, frozen.preprocessing
        heads = list(getattr(self.teacher, "head_names", ["main"]))
        if teacher_head not in heads:
            raise ConfigError(f"objective kd: the teacher has no head {teacher_head!r}; set teacher_head to one "
                              f"of {heads}")

    def term_names(self) -> list[str]:
        return ["kd"]

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits on the student's view `x`, re-normalised with the teacher's preprocessing."""
        if self.teacher.training:  # whoever switched it to train mode, its BN statistics stay frozen
            self.teacher.eval()
        with torch.no_grad():
            return self.teacher(renormalize(x, self.student_preprocessing, self.teacher_preprocessing)
                                ).logits[self.teacher_head]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        z = out.logits[self.head]
        return {"kd": self.weight * self._kd(z, self.teacher_logits(batch.x), self.temperature)}


def _peer_heads(ctx: ObjectiveContext, head: str, who: str) -> list[str]:
    keys = [head] + [k for k in ctx.head_names if k.startswith("peer") and k.endswith("/" + head)]
    if len(keys) < 2:
        raise ConfigError(f"objective {who} needs at least two peers: set model.peers=2")
    return keys


@OBJECTIVES.register("dml")
class MutualLearning(Objective):
    """DML: each peer's CE (from `ce`) plus term `dml/<peer>` = weight·mean_{j≠k} KL(p_j ‖ p_k) at T = 1 (Zhang et al. 2018, eq. 10).

    DML has no temperature: the paper's KL is between the peers' plain softmax outputs."""

    uses_labels = False  # reads no batch.y: may sit beside a composer such as mixmatch

    def __init__(self, ctx: ObjectiveContext, head: str = "main", weight: float = 1.0) -> None:
        self.keys, self.weight = _peer_heads(ctx, head, "dml"), float(weight)

    def term_names(self) -> list[str]:
        return [f"dml/{k}" for k in self.keys]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        losses = dml_losses([out.logits[k] for k in self.keys])
        return {f"dml/{k}": self.weight * v for k, v in zip(self.keys, losses)}


@OBJECTIVES.register("kdcl")
class CollaborativeLearning(Objective):
    """KDCL (simple variant): each peer's CE (from `ce`) plus term `kdcl/<peer>` = weight·T²·KL(softmax(mean of peers/T) ‖ softmax(z_k/T)), T = 2 (Guo et al. 2020)."""

    uses_labels = False  # reads no batch.y: may sit beside a composer such as mixmatch

    def __init__(self, ctx: ObjectiveContext, head: str = "main", temperature: float = 2.0,
                 weight: float = 1.0) -> None:
        self.keys, self.weight = _peer_heads(ctx, head, "kdcl"), float(weight)
        self.temperature = _positive_temperature(temperature, "kdcl")

    def term_names(self) -> list[str]:
        return [f"kdcl/{k}" for k in self.keys]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        losses = kdcl_losses([out.logits[k] for k in self.keys], self.temperature)
        return {f"kdcl/{k}": self.weight * v for k, v in zip(self.keys, losses)}
