"""MobileNet-V2 (Sandler et al. 2018): the CIFAR variant paper 003 counts (`stem=cifar`, spec 003 §1.5) and the
ImageNet layout (`stem=imagenet`, torchvision's module names: `features.N...`)."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import BACKBONES
from .init import he_init

# (expansion t, output channels c, blocks n, first stride s) per stage group
CIFAR_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1),
                (6, 320, 1, 1)]  # spec 003 §1.5: strides 1,2,2,2,1,1,1 (not the ImageNet pattern)
IMAGENET_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1)]  # Sandler et al. 2018, Table 2


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1,
             bias: bool = False, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias), nn.BatchNorm2d(cout)]
    return layers + ([nn.ReLU6(inplace=True)] if act else [])


class InvertedResidual(nn.Module):
    """1×1 expand C → tC, BN, ReLU6; 3×3 depthwise (stride s), BN, ReLU6; 1×1 project tC → c, BN (linear);
    `x +` when s = 1 and C = c. CIFAR (`cifar=True`, as weiaicunzai's `LinearBottleNeck`): convs with biases, one
    flat `conv` sequence, expansion even at t = 1. ImageNet (torchvision's `InvertedResidual`, same names): no
    biases, nested `conv`, no expansion at t = 1."""

    group_style = "regroup"  # `grouped` changes only the depthwise conv's groups (spec 003 §1.5)

    def __init__(self, cin: int, cout: int, stride: int, t: int, cifar: bool) -> None:
        super().__init__()
        hidden = cin * t
        self.residual = stride == 1 and cin == cout
        if cifar:
            self.conv = nn.Sequential(*_conv_bn(cin, hidden, 1, bias=True),
                                      *_conv_bn(hidden, hidden, 3, stride, 1, hidden, bias=True),
                                      *_conv_bn(hidden, cout, 1, bias=True, act=False))
            self._depthwise = (self.conv, "3")
        else:
            layers: list[nn.Module] = [nn.Sequential(*_conv_bn(cin, hidden, 1))] if t != 1 else []
            layers.append(nn.Sequential(*_conv_bn(hidden, hidden, 3, stride, 1, hidden)))
            layers += _conv_bn(hidden, cout, 1, act=False)
            self.conv = nn.Sequential(*layers)
            self._depthwise = (layers[-3], "0")

    def remove_shortcut(self) -> None:
        """Drop the addition `out += x` (MobileNet-V2 has no projection shortcuts; spec 003 §1.5)."""
        self.residual = False

    def grouping_targets(self) -> list[tuple[nn.Module, str]]:
        return [self._depthwise]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + x if self.residual else out


class MobileNetV2(nn.Module):
    """Backbone only. `stem=cifar`: 1×1 conv 3 → 32 with padding 1 (34×34 maps), biases everywhere, strides
    1,2,2,2,1,1,1, 1×1 conv 320 → 1280 (spec 003 §1.5; modules `pre`, `stage1..7`, `conv1`). `stem=imagenet`:
    torchvision's layout (`features.0..18`, 3×3 stride-2 stem, dropout 0.2 before the classifier; torchvision's
    `classifier.1` is our `fc`). `forward_features` → (pooled, [maps after each of the 7 stage groups])."""

    def __init__(self, *, stem: str = "cifar", width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            from ..errors import ConfigError
            raise ConfigError(f"unknown stem {stem!r}; choose one of: cifar, imagenet")
        cifar = stem == "cifar"
        self.stem_name = stem
        ch = lambda c: max(1, round(c * width))  # noqa: E731
        cin, last = ch(32), max(1, round(1280 * max(1.0, width)))
        stages, ends = [], []
        for t, c, n, s in (CIFAR_STAGES if cifar else IMAGENET_STAGES):
            group = []
            for j in range(n):
                group.append(InvertedResidual(cin, ch(c), s if j == 0 else 1, t, cifar))
                cin = ch(c)
            stages.append(group)
        self.stage_channels = [ch(c) for _, c, _, _ in (CIFAR_STAGES if cifar else IMAGENET_STAGES)]
        if cifar:
            self.pre = nn.Sequential(*_conv_bn(in_channels, ch(32), 1, padding=1, bias=True))
            for i, group in enumerate(stages):
                self.add_module(f"stage{i + 1}", nn.Sequential(*group))
            self.conv1 = nn.Sequential(*_conv_bn(cin, last, 1, bias=True))
            self._groups = [getattr(self, f"stage{i + 1}") for i in range(len(stages))]
        else:
            blocks = [b for group in stages for b in group]
            self.features = nn.Sequential(nn.Sequential(*_conv_bn(in_channels, ch(32), 3, 2, 1)), *blocks,
                                          nn.Sequential(*_conv_bn(cin, last, 1)))
            self.dropout = nn.Dropout(0.2)
            ends = list(torch.tensor([len(g) for g in stages]).cumsum(0).tolist())
        self._ends = ends  # ImageNet layout: index in `features` after which each stage group ends
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = last
        if not cifar:  # torchvision's initialisation; the CIFAR variant keeps PyTorch's defaults (weiaicunzai)
            he_init(self)

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        if self.stem_name == "cifar":
            x = self.pre(x)
            for group in self._groups:
                x = group(x)
                if stages:
                    maps.append(x)
            x = self.conv1(x)
        else:
            for i, layer in enumerate(self.features):
                x = layer(x)
                if stages and i in self._ends:
                    maps.append(x)
        pooled = torch.flatten(self.avgpool(x), 1)
        return (pooled if self.stem_name == "cifar" else self.dropout(pooled)), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


@BACKBONES.register("mobilenet_v2")
def mobilenet_v2(**kw) -> MobileNetV2:
    """MobileNet-V2; `stem=cifar` is the CIFAR-100 network of paper 003 (spec §1.5), `stem=imagenet` torchvision's."""
    return MobileNetV2(**kw)
