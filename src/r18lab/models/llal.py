"""The loss-prediction module of Learning Loss for Active Learning (Yoo & Kweon 2019, fig. 3) as an aux-only head.

Per stage s: global average pool → Linear(C_s → dim) → ReLU; concatenate the four → Linear(4·dim → 1); its one aux
output `llal.loss` (B,) is the predicted loss. The `llal` objective trains it with the ranking loss; the
`llal_detach` hook sets `detach_stages` so that, late in training, that loss no longer reaches the backbone.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import HEADS
from .gramian import infer_stage_channels
from .heads import Head


def llal_param_count(stage_channels: Sequence[int], dim: int = 128) -> int:
    """Σ_s (C_s·dim + dim) + (len·dim + 1): one Linear per stage and the final Linear (Yoo & Kweon 2019, fig. 3)."""
    return sum(c * dim + dim for c in stage_channels) + len(stage_channels) * dim + 1


@HEADS.register("llal")
class LossPredictionHead(Head):
    """Predicted loss from the stage maps: GAP → Linear(C_s→dim) → ReLU per stage, concat → Linear(·→1) (LLAL fig. 3;
    dim 128, paper 000 appendix A.4). `stage_channels` defaults to a ResNet's D/8, D/4, D/2, D and is checked
    against the maps at each forward. `detach_stages` (set by the `llal_detach` hook) cuts the gradient into the
    backbone, as the reference does after epoch 120 of 200."""

    needs_stages = True
    produces_logits = False
    aux_outputs = ("loss",)

    def __init__(self, num_features: int, num_classes: int, *, dim: int = 128,
                 stage_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"llal_dim must be a whole number ≥ 1 (the paper's 128), got {dim!r}")
        if stage_channels is None:
            stage_channels = infer_stage_channels(num_features, "llal")
        elif (isinstance(stage_channels, (str, bytes)) or not isinstance(stage_channels, Sequence)
              or not stage_channels
              or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in stage_channels)):
            raise ConfigError(f"llal_stage_channels must be a list of positive widths, got {stage_channels!r}")
        self.stage_channels, self.dim = list(stage_channels), dim
        self.detach_stages = False
        self.stage_fc = nn.ModuleList(nn.Linear(c, dim) for c in self.stage_channels)
        self.fc = nn.Linear(len(self.stage_channels) * dim, 1)

    def forward(self, features: torch.Tensor, stages: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        got = [int(t.shape[1]) for t in stages]
        if got != self.stage_channels:
            raise ConfigError(f"head llal was built for stage widths {self.stage_channels} but the backbone gives "
                              f"{got}; set llal_stage_channels={got}")
        parts = [torch.relu(fc((s.detach() if self.detach_stages else s).mean((2, 3))))
                 for fc, s in zip(self.stage_fc, stages)]
        return {"aux": {"loss": self.fc(torch.cat(parts, 1)).view(-1)}}
