"""A frozen teacher for distillation objectives: rebuilt from its weights file, eval mode, no gradients, fed the
student's view re-normalised with its own preprocessing, its input kind and classes checked against the student's.

The same checks as `kd` (objectives/distill.py), with the objective's name in every message; used by `hint`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models.io import Preprocessing, renormalize
from .base import ObjectiveContext


@dataclass
class FrozenTeacher:
    """A loaded teacher: `model` frozen, `path` and `identity` from its file, both preprocessings."""

    model: nn.Module
    path: Path
    identity: str | None
    spec: dict[str, Any]
    preprocessing: Preprocessing
    student_preprocessing: Preprocessing

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The student's normalised batch re-expressed in the teacher's normalisation (exact, affine)."""
        return renormalize(x, self.student_preprocessing, self.preprocessing)

    def frozen(self) -> nn.Module:
        """The model, back in eval mode if anyone switched it (its BN statistics stay frozen)."""
        if self.model.training:
            self.model.eval()
        return self.model


def load_frozen_teacher(ctx: ObjectiveContext, teacher: Any, who: str, *, head: str | None = None,
                        teacher_head: str = "main") -> FrozenTeacher:
    """Load `teacher` (one weights path) through `ctx.load`, frozen, with one-line errors naming objective `who`.

    With `head`, the teacher's `teacher_head` must have as many outputs as the student's `head` (which may answer
    another label set than the run's data, e.g. a consolidation student's heads); without, the teacher's classes
    must be the data's (count, names and order)."""
    if not teacher:
        raise ConfigError(f"objective {who} needs a teacher: set teacher=PATH/model.safetensors, or per entry "
                          f"objective=[ce, {{name: {who}, teacher: PATH}}]")
    if not isinstance(teacher, (str, Path)):
        raise ConfigError(f"objective {who} takes one teacher path, got {teacher!r}; for several teachers use one "
                          f"{who} entry each with distinct tags")
    student_pre = ctx.preprocessing
    if student_pre is None:
        raise ConfigError(f"objective {who}: the student's preprocessing is unknown (ObjectiveContext.preprocessing "
                          "is None), so the teacher's input cannot be re-normalised; build the context with it")
    loaded = ctx.load(str(teacher))
    model = loaded.model.eval().requires_grad_(False)
    pre = loaded.preprocessing
    if pre is None:
        raise CheckpointError(f"objective {who}: teacher {teacher} carries no preprocessing (written before r18lab "
                              "stored it), so it cannot be fed correctly; re-train the teacher with this r18lab")
    t_size, s_size = tuple(pre.input_size), tuple(student_pre.input_size)
    if t_size[0] != s_size[0] or pre.channel_order != student_pre.channel_order:
        raise ConfigError(f"objective {who}: teacher {teacher} takes {t_size[0]}-channel {pre.channel_order} "
                          f"images but the student gets {s_size[0]}-channel {student_pre.channel_order}; "
                          "use a teacher trained on the same kind of images")
    if t_size[1:] != s_size[1:]:
        raise ConfigError(f"objective {who}: teacher {teacher} was trained on {t_size[1]}×{t_size[2]} images but "
                          f"the student gets {s_size[1]}×{s_size[2]}; set data.image_size={t_size[1]} or use a "
                          "teacher trained at this size")
    if head is not None:
        t_heads = dict(getattr(model, "head_classes", {}))
        if teacher_head not in t_heads:
            raise ConfigError(f"objective {who}: teacher {teacher} has no head {teacher_head!r}; it has "
                              f"{sorted(t_heads)} (set teacher_head)")
        want = ctx.classes_of(head)
        if t_heads[teacher_head] != want:
            raise ConfigError(f"objective {who}: head {teacher_head!r} of teacher {teacher} has "
                              f"{t_heads[teacher_head]} classes but the student's head {head!r} has {want}; give "
                              f"the head classes: {t_heads[teacher_head]} or pair it with another teacher")
        return FrozenTeacher(model, loaded.path, loaded.identity, dict(loaded.spec), pre, student_pre)
    t_classes = loaded.spec.get("num_classes", getattr(model, "num_classes", None))
    if t_classes is not None and t_classes != ctx.num_classes:
        raise ConfigError(f"objective {who}: the teacher has {t_classes} classes but this data has "
                          f"{ctx.num_classes}; set teacher= to a model trained on the same classes")
    if pre.classes and student_pre.classes and tuple(pre.classes) != tuple(student_pre.classes):
        raise ConfigError(f"objective {who}: the teacher's classes {list(pre.classes)[:5]} differ from this data's "
                          f"{list(student_pre.classes)[:5]} (names or order); use a teacher trained on "
                          "the same classes")
    return FrozenTeacher(model, loaded.path, loaded.identity, dict(loaded.spec), pre, student_pre)
