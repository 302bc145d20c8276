"""Hint (FitNets, Romero et al. 2015): term `hint` = β·½‖f_t^(l) − r(f_s^(l))‖² (spec 002c §1).

r is the student's `hint` head (models/hint.py; trained with the student, dropped at export); its aux output
`hint.features` is r(f_s^(l)). f_t^(l) is a frozen teacher's stage map at the same tap, fed the student's view
re-normalised with the teacher's own preprocessing (as `kd`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext
from .teacher import load_frozen_teacher


def hint_loss(regressed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½‖target − regressed‖² summed over each image's map (C×H×W), mean over the batch (FitNets sec. 2.2; spec 002c §1)."""
    d = regressed.float() - target.detach().float()
    return 0.5 * d.square().flatten(1).sum(1).mean()


def hint_loss_mean(regressed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over N×C×H×W of (target − regressed)² (no ½): `nn.MSELoss()`, RepDistiller's `HintLoss`."""
    return F.mse_loss(regressed.float(), target.detach().float())


#: the `hint` objective's `reduction` choices
HINT_REDUCTIONS = {"sum_over_elements_mean_over_batch": hint_loss, "mean": hint_loss_mean}


def _stage(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
        raise ConfigError(f"objective hint: {what} must be 1..4 (layer1..layer4), got {value!r}")
    return value


@OBJECTIVES.register("hint")
class Hint(Objective):
    """Term `hint` = weight·½‖f_t − r(f_s)‖² per image, mean over the batch (FitNets; paper 002c §3/§9, Hint γ/β).

    `stage` is the tapped layer (1..4 = layer1..layer4; default 2, the paper's "second residual stage"); the
    student's `head` (default `hint`) must tap the same stage and regress to the teacher's width there;
    `teacher_stage` taps another teacher layer (cross-architecture pairs; spatial sizes must still match).
    `weight` is β (paper 002c §9: R50→R18 β = 5 with γ = 1 on CE, i.e. `objective=[ce, {name: hint, weight: 5}]`).

    `reduction`: `sum_over_elements_mean_over_batch` (default; the spec's ½‖·‖², summed over C×H×W, mean over
    the batch) or `mean` (`nn.MSELoss()`: the squared error's mean over every element, no ½ — what RepDistiller and
    most re-implementations use). Flag: paper 002c's weights (e.g. CRD β = 0.8, KL γ/α = 0.1/0.9 for some pairs)
    match RepDistiller's defaults, so its β may have been tuned for `mean`; under the default form the term is
    2·C·H·W times larger for the same β. One-stage training (hint added to CE from the start), not FitNets'
    two-stage schedule (hint pre-training, then KD), as paper 002c describes its total loss γ·L_CLS + β·L_Hint."""

    uses_labels = False  # reads no batch.y: may sit beside a composer such as mixmatch

    def __init__(self, ctx: ObjectiveContext, teacher: str | None = None, stage: int = 2,
                 teacher_stage: int | None = None, head: str = "hint", weight: float = 1.0,
                 reduction: str = "sum_over_elements_mean_over_batch") -> None:
        if reduction not in HINT_REDUCTIONS:
            raise ConfigError(f"objective hint: unknown reduction {reduction!r}; choose one of "
                              f"{', '.join(HINT_REDUCTIONS)}")
        self.reduction, self._loss = reduction, HINT_REDUCTIONS[reduction]
        self.stage = _stage(stage, "stage")
        self.teacher_stage = self.stage if teacher_stage is None else _stage(teacher_stage, "teacher_stage")
        self.weight = float(weight)
        self.head, self.key = head, f"{head}.features"  # the head's aux output, `<head>.<aux>`
        t = load_frozen_teacher(ctx, teacher, "hint")
        self._teacher = t
        self.teacher, self.teacher_path, self.teacher_identity = t.model, t.path, t.identity
        maps = self._probe_teacher(ctx)
        if len(maps) < self.teacher_stage:
            raise ConfigError(f"objective hint: the teacher gives {len(maps)} stage maps, so it has no stage "
                              f"{self.teacher_stage}; set teacher_stage to 1..{len(maps)}")
        self.teacher_shape = tuple(int(v) for v in maps[self.teacher_stage - 1].shape[1:])  # C, H, W
        c = self.teacher_shape[0]
        fix = f"model.heads=[main, {{name: {head}, stage: {self.stage}, teacher_channels: {c}}}]"
        if self.key not in ctx.aux_names:
            raise ConfigError(f"objective hint: the student has no {head!r} head (aux output {self.key!r}); add it: "
                              f"{fix}")
        module = ctx.head_modules.get(head)
        if module is not None:  # declared options, checked before any step (the forward checks the shapes too)
            if getattr(module, "stage", None) != self.stage:
                raise ConfigError(f"objective hint taps stage {self.stage} but head {head} taps stage "
                                  f"{getattr(module, 'stage', None)}; make them agree: {fix} (or set the "
                                  "objective's stage)")
            if getattr(module, "teacher_channels", None) != c:
                got = getattr(module, "teacher_channels", None)
                raise ConfigError(f"objective hint: head {head} regresses to {got} channels but the teacher's "
                                  f"layer{self.teacher_stage} has {c}; set {fix}")

    def _probe_teacher(self, ctx: ObjectiveContext) -> list[torch.Tensor]:
        """The teacher's stage maps on one blank image of the input size (shapes only)."""
        from ..models.classifier import stage_maps
        size = tuple(self._teacher.preprocessing.input_size)
        p = next(self.teacher.parameters(), None)
        device = p.device if p is not None else ctx.device
        with torch.no_grad():
            return stage_maps(self._teacher.frozen(), torch.zeros((1, *size), device=device))

    def term_names(self) -> list[str]:
        return ["hint"]

    def teacher_map(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's stage map at `teacher_stage` on the student's view `x` (no gradient)."""
        from ..models.classifier import stage_maps
        with torch.no_grad():
            return stage_maps(self._teacher.frozen(), self._teacher.inputs(x))[self.teacher_stage - 1]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        regressed = out.aux[self.key]
        target = self.teacher_map(batch.x)
        if regressed.shape != target.shape:
            raise ConfigError(f"objective hint: the student's {self.key} is {tuple(regressed.shape)} but the "
                              f"teacher's layer{self.teacher_stage} map is {tuple(target.shape)}; tap stages of "
                              "the same spatial size (stage/teacher_stage) with the teacher's width as "
                              "teacher_channels")
        return {"hint": self.weight * self._loss(regressed, target)}
