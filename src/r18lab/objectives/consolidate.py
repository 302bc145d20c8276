"""Representation consolidation (Li et al. 2021, paper 001 §2, eq. 1–2): a student with one head per teacher, each
head distilled from its frozen teacher on unlabelled proxy images; the generalist is one of the teachers.

Traditional distillation (task teachers only), consolidation (generalist + task teachers), soft-label
self-distillation (the generalist only) and the loss-weight variants are configurations of this one objective
(spec 001 §1.4): the list of `teachers` and their weights.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext
from .distill import _positive_temperature, kl_to_target
from .teacher import FrozenTeacher, load_frozen_teacher


def distillation_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               temperature: float) -> torch.Tensor:
    """L_KD = −Σ_k softmax(z_t/T)_k · log softmax(z_s/T)_k, mean over the batch (paper 001 eq. 2; Hinton et al. 2015)."""
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return -(p_t * F.log_softmax(student_logits.float() / temperature, dim=1)).sum(1).mean()


def consolidation_loss(student: dict[str, torch.Tensor], teachers: dict[str, torch.Tensor],
                       weights: dict[str, float], temperature: float) -> torch.Tensor:
    """L = Σ_i λ_i · L_KD(h_s^i(g_s(x)), f_i(x)) over the heads i (paper 001 eq. 1)."""
    return sum(weights[h] * distillation_cross_entropy(student[h], teachers[h], temperature) for h in weights)


#: how task teachers (entries without `generalist: true` and without their own weight) are weighed
TASK_WEIGHTS = ("one_over_n", "one")
_ENTRY_KEYS = ("checkpoint", "head", "teacher_head", "weight", "temperature", "generalist")


@OBJECTIVES.register("consolidate")
class Consolidate(Objective):
    """Term `consolidate/<head>` = λ·L_KD(student head, its teacher) per entry of `teachers` (paper 001 eq. 1–2);
    logged only: `info/kl/<head>` (the KL, 0 at a perfect match; same gradient as L_KD) and `info/agree/<head>`
    (top-1 agreement with the teacher on the batch, %).

    Each entry of `teachers` is {checkpoint, head, teacher_head: main, weight, temperature, generalist: false}:
    the frozen weights, the student head it teaches (which must have the teacher head's number of outputs; give
    the student head `classes: N`), the teacher's head, λ, T. Teachers run in eval mode on the student's augmented
    view, re-normalised with their own stored preprocessing (spec 001 §7.5–7.6).

    λ (lost in the text, spec 001 §1.2): an entry's own `weight`, else 1 for the generalist (`generalist: true`) and
    for task teachers 1/N (`task_weights: one_over_n`, the default: the generalist weighs as much as all N task
    teachers, old:new = 1:1) or 1 (`task_weights: one`, the other reading; the two agree for N = 1). T (lost):
    2, the first author's LwF value. No T² factor (paper eq. 2 has none); `t2_scale: true` adds it."""

    uses_labels = False  # reads no batch.y: may sit beside a composer such as mixmatch

    def __init__(self, ctx: ObjectiveContext, teachers: list[dict[str, Any]] | None = None,
                 temperature: float = 2.0, task_weights: str = "one_over_n", t2_scale: bool = False) -> None:
        if not isinstance(teachers, list) or not teachers:
            raise ConfigError("objective consolidate needs teachers: a list of {checkpoint: PATH, head: NAME}, e.g. "
                              "[{checkpoint: gen/model.safetensors, head: gen, generalist: true}, "
                              "{checkpoint: teacher/model.safetensors, head: t1}]")
        if task_weights not in TASK_WEIGHTS:
            raise ConfigError(f"objective consolidate: task_weights must be one of {', '.join(TASK_WEIGHTS)}, "
                              f"got {task_weights!r}")
        self.temperature = _positive_temperature(temperature, "consolidate")
        self.t2_scale = bool(t2_scale)
        n_task = sum(1 for e in teachers if isinstance(e, dict) and not e.get("generalist"))
        self.entries: list[dict[str, Any]] = []
        loaded: dict[str, FrozenTeacher] = {}
        for i, e in enumerate(teachers, 1):
            if not isinstance(e, dict) or not isinstance(e.get("checkpoint"), str) or not isinstance(e.get("head"), str):
                raise ConfigError(f"objective consolidate: teacher #{i} must be {{checkpoint: PATH, head: NAME, ...}}, "
                                  f"got {e!r}")
            unknown = [k for k in e if k not in _ENTRY_KEYS]
            if unknown:
                raise ConfigError(f"objective consolidate: teacher #{i} has unknown key(s) {unknown}; valid: "
                                  f"{', '.join(_ENTRY_KEYS)}")
            head = e["head"]
            if head not in ctx.head_names:
                raise ConfigError(f"objective consolidate: teacher #{i} teaches head {head!r}, which the student lacks "
                                  f"(it has {ctx.head_names}); add {{name: {head}, type: main, classes: N}} to "
                                  "model.heads")
            if any(x["head"] == head for x in self.entries):
                raise ConfigError(f"objective consolidate: two teachers teach head {head!r}; give each its own head")
            teacher_head = e.get("teacher_head", "main")
            key = f"{e['checkpoint']}#{teacher_head}"
            frozen = loaded.get(key) or load_frozen_teacher(ctx, e["checkpoint"], "consolidate", head=head,
                                                            teacher_head=teacher_head)
            loaded[key] = frozen
            generalist = bool(e.get("generalist", False))
            default = 1.0 if generalist or task_weights == "one" else 1.0 / max(n_task, 1)
            weight = float(e.get("weight", default))
            if not weight >= 0:
                raise ConfigError(f"objective consolidate: teacher #{i} weight must be >= 0, got {weight}")
            temp = _positive_temperature(e.get("temperature", self.temperature), "consolidate")
            self.entries.append({"head": head, "teacher_head": teacher_head, "teacher": frozen,
                                 "weight": weight, "temperature": temp, "generalist": generalist})

    @property
    def weights(self) -> dict[str, float]:
        """λ per student head."""
        return {e["head"]: e["weight"] for e in self.entries}

    def term_names(self) -> list[str]:
        heads = [e["head"] for e in self.entries]
        return ([f"consolidate/{h}" for h in heads] + [f"info/kl/{h}" for h in heads]
                + [f"info/agree/{h}" for h in heads])

    def teacher_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each entry's frozen teacher logits on the student's view (one forward per distinct checkpoint)."""
        out: dict[str, torch.Tensor] = {}
        cache: dict[int, Any] = {}
        with torch.no_grad():
            for e in self.entries:
                t: FrozenTeacher = e["teacher"]
                if id(t) not in cache:
                    cache[id(t)] = t.frozen()(t.inputs(x))
                out[e["head"]] = cache[id(t)].logits[e["teacher_head"]]
        return out

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        targets = self.teacher_logits(batch.x)
        terms: dict[str, torch.Tensor] = {}
        for e in self.entries:
            h, temp = e["head"], e["temperature"]
            z, zt = out.logits[h], targets[h]
            scale = temp ** 2 if self.t2_scale else 1.0
            terms[f"consolidate/{h}"] = e["weight"] * scale * distillation_cross_entropy(z, zt, temp)
            terms[f"info/kl/{h}"] = kl_to_target(z.detach(), zt, temp)
            terms[f"info/agree/{h}"] = 100.0 * (z.detach().argmax(1) == zt.argmax(1)).float().mean()
        return terms
