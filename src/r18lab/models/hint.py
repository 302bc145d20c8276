"""FitNets' hint regressor r as a head (Romero et al. 2015; spec 002c §1): r(f_s^(l)) for the `hint` objective.

The regressor has parameters, so it is a head (trained by the optimizer, dropped by `export --keep main`). It
produces no logits (`produces_logits = False`): its one aux output `hint.features` = r(student's stage map),
shaped like the teacher's map at its tap.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import HEADS
from .heads import Head

#: the regressor's form. The spec (002c §1, §6.8) gives none: FitNets uses a conv regressor; `conv1x1_bn`
#: (1×1 conv + BN) is the spec's pick, flagged; `conv3x3` is a 3×3 conv with bias, padding 1 (FitNets'
#: regressor is convolutional; ours keeps the size); `conv1x1_bn_relu` is RepDistiller's `ConvReg` for equal
#: sizes (1×1 conv + BN + ReLU), the code base whose Hint/CRD weights paper 002c's appendix §9 appears to use.
REGRESSORS = ("conv1x1_bn", "conv3x3", "conv1x1_bn_relu")


def _int_in(value: object, low: int, high: int | None, what: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f"≥ {low}"
        raise ConfigError(f"{what} must be an integer {span}, got {value!r}; {fix}")
    return value


def make_regressor(kind: str, cin: int, cout: int) -> nn.Module:
    """One of `REGRESSORS`, mapping `cin` student channels to `cout` teacher channels at the same spatial size."""
    if kind == "conv3x3":
        return nn.Conv2d(cin, cout, 3, padding=1)
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    if kind == "conv1x1_bn_relu":
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@HEADS.register("hint")
class HintRegressor(Head):
    """r: student stage map (layer`stage`'s output) → `teacher_channels` channels (FitNets, Romero et al. 2015, sec. 2.2).

    `stage` 1..4 = layer1..layer4 (default 2: the paper's "second residual stage", 002c §1); `teacher_channels` is
    required (the teacher's width at its tap); `student_channels` defaults to a ResNet's width at `stage`
    (pooled width D·2^(stage−4), the stages doubling) and is checked against the map at the first forward.
    """

    needs_stages = True
    produces_logits = False
    aux_outputs = ("features",)

    def __init__(self, num_features: int, num_classes: int, *, teacher_channels: int | None = None,
                 stage: int = 2, regressor: str = "conv1x1_bn", student_channels: int | None = None) -> None:
        super().__init__()
        fix = "e.g. model.heads=[main, {name: hint, stage: 2, teacher_channels: C}] (C: the teacher's width there)"
        if teacher_channels is None:
            raise ConfigError(f"head hint needs teacher_channels (the teacher's channels at its tap); {fix}")
        self.teacher_channels = _int_in(teacher_channels, 1, None, "head hint: teacher_channels", fix)
        self.stage = _int_in(stage, 1, 4, "head hint: stage (1..4 = layer1..layer4)", fix)
        if regressor not in REGRESSORS:
            raise ConfigError(f"head hint: unknown regressor {regressor!r}; choose one of {', '.join(REGRESSORS)}")
        if student_channels is None:
            shift = 4 - self.stage
            if num_features % (1 << shift):
                raise ConfigError(f"head hint cannot infer the student's width at stage {self.stage} from "
                                  f"{num_features} features; set it: {{name: hint, student_channels: W, ...}}")
            student_channels = num_features >> shift
        self.student_channels = _int_in(student_channels, 1, None, "head hint: student_channels",
                                        "the student's channels at the tapped stage")
        self.regressor_kind = regressor
        self.regressor = make_regressor(regressor, self.student_channels, self.teacher_channels)

    def forward(self, features: torch.Tensor, stages: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        if len(stages) < self.stage:
            raise ConfigError(f"head hint taps stage {self.stage} but the backbone gives {len(stages)} stage maps; "
                              f"set hint's stage to 1..{len(stages)}")
        f = stages[self.stage - 1]
        if f.shape[1] != self.student_channels:
            raise ConfigError(f"head hint was built for {self.student_channels} student channels at stage "
                              f"{self.stage} but the backbone gives {f.shape[1]}; set "
                              f"{{name: hint, student_channels: {f.shape[1]}, ...}}")
        return {"aux": {"features": self.regressor(f)}}
