"""Pre-activation Wide ResNet WRN-d-k for 32×32 inputs (Zagoruyko & Komodakis 2016; the layout paper 003 counts,
spec 003 §1.4)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES
from .init import he_init


class PreActBlock(nn.Module):
    """x → BN → ReLU → conv1 (stride s) → BN → ReLU → Dropout(p) → conv2, plus the shortcut: the raw x, or — when
    the width changes — a 1×1 conv (no BN) on the activated x, which then also feeds conv1 (spec 003 §1.4)."""

    residual = True
    group_style = "dconv"

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.activate_first = cin != cout or stride != 1
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if self.activate_first else None

    def remove_shortcut(self) -> None:
        """No addition and no projection; the width-changing block's pre-activation stays (spec 003 §8.8)."""
        self.residual = False
        self.shortcut = None

    def grouping_targets(self) -> list[tuple[nn.Module, str]]:
        return [(self, "conv1"), (self, "conv2")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        if self.activate_first:
            x = act
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(act)))))
        if not self.residual:
            return out
        return out + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(nn.Module):
    """Stem 3×3 conv 3 → 16, three groups of n = (d − 4)/6 blocks (widths 16k, 32k, 64k; strides 1, 2, 2), then
    BN → ReLU → global average pool. `forward_features` → (pooled, [group maps])."""

    def __init__(self, depth: int = 28, widen: int = 10, dropout: float = 0.3, *, stem: str = "cifar",
                 width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if stem != "cifar":
            raise ConfigError(f"backbone wrn has only the CIFAR stem (3×3 conv), got stem={stem!r}; set stem=cifar")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"wrn depth must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
        if isinstance(widen, bool) or not isinstance(widen, int) or widen < 1:
            raise ConfigError(f"wrn widen must be a positive integer, got {widen!r}")
        if not 0 <= float(dropout) < 1:
            raise ConfigError(f"wrn dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        stem_width = max(1, round(16 * width))
        planes = [max(1, round(c * widen * width)) for c in (16, 32, 64)]
        self.depth, self.widen, self.stem_name = depth, widen, stem
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        cin = stem_width
        for i, (p, s) in enumerate(zip(planes, (1, 2, 2))):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(cin, p, s if j == 0 else 1, float(dropout)))
                cin = p
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        self.stage_channels = planes
        he_init(self)

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.conv1(x)
        maps = []
        for i in range(1, 4):
            x = getattr(self, f"layer{i}")(x)
            if stages:
                maps.append(x)
        x = self.relu(self.bn1(x))
        return torch.flatten(self.avgpool(x), 1), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


@BACKBONES.register("wrn")
def wrn(depth: int = 28, widen: int = 10, dropout: float = 0.3, **kw) -> WideResNet:
    """WRN-depth-widen, pre-activation; dropout 0.3 between the convs as in every WRN run of paper 003 (L82)."""
    return WideResNet(depth, widen, dropout, **kw)


wrn.options = ("depth", "widen", "dropout")

SHORTCUTS = {"wrn16_1": (16, 1), "wrn22_2": (22, 2), "wrn22_10": (22, 10), "wrn28_2": (28, 2),
             "wrn40_1": (40, 1), "wrn40_2": (40, 2)}


def _shortcut(depth: int, widen: int, dropout: float = 0.3, **kw) -> WideResNet:
    return WideResNet(depth, widen, dropout, **kw)


for _name, (_d, _k) in SHORTCUTS.items():
    _factory = partial(_shortcut, _d, _k)
    _factory.__doc__ = f"WRN-{_d}-{_k} (pre-activation; paper 003 uses WRN-22×2, 22×10, 28×2, 40×2)."
    _factory.options = ("dropout",)
    BACKBONES.register(_name)(_factory)
