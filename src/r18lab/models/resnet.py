"""ResNet-18/34/50 backbones with torchvision's parameter names (He et al. 2016; torchvision layout)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES
from .activations import make_activation
from .init import he_init


def _activation(name: str) -> nn.Module:
    """torchvision's in-place ReLU for `relu` (unchanged default), else the named activation (e.g. gelu)."""
    return nn.ReLU(inplace=True) if name == "relu" else make_activation(name)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class ResidualBlock(nn.Module):
    """A block y = relu(F(x) + s(x)), s = identity or a 1×1 projection (`downsample`); `residual=False` drops s."""

    residual = True
    group_style = "dconv"  # `grouped` turns each 3×3 conv into grouped conv → BN → ReLU → 1×1 (spec 003 §1.2)

    def remove_shortcut(self) -> None:
        """y = relu(F(x)): identity and projection shortcut gone, the projection's parameters with it."""
        self.residual = False
        self.downsample = None

    def _join(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class BasicBlock(ResidualBlock):
    """Two 3×3 convs with an identity (or 1×1 projection) shortcut; torchvision names."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = _activation(activation)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(cin, planes, stride) if stride != 1 or cin != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self._join(self.bn2(self.conv2(out)), x)

    def grouping_targets(self) -> list[tuple[nn.Module, str]]:
        return [(self, "conv1"), (self, "conv2")]

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(ResidualBlock):
    """1×1 → 3×3 → 1×1 convs, stride on the 3×3 (torchvision 'ResNet v1.5'), expansion 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = _activation(activation)
        self.downsample = _projection(cin, out, stride) if stride != 1 or cin != out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._join(self.bn3(self.conv3(out)), x)

    def grouping_targets(self) -> list[tuple[nn.Module, str]]:
        return [(self, "conv2")]  # the 3×3 conv (ResNeXt's place for groups)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """Backbone only: stem, four stages, global average pool. `forward_features` → (pooled, stage maps).

    `activation` (relu, gelu, gelu_tanh) replaces every ReLU; `zero_init_residual` sets γ = 0 in the last BN of
    every block, so each residual branch starts silent (torchvision's option; Flax ResNet's `scale_init=zeros`,
    spec 002d §1). Both default to torchvision's behaviour."""

    def __init__(self, block: type, layers: list[int], *, stem: str = "cifar", width: float = 1.0,
                 in_channels: int = 3, activation: str = "relu", zero_init_residual: bool = False) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ConfigError(f"unknown stem {stem!r}; choose one of: cifar, imagenet")
        planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
        self.stem_name = stem
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, planes[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = _activation(activation)
        cin = planes[0]
        for i, (p, n) in enumerate(zip(planes, layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, p, stride=(1 if i == 0 or j > 0 else 2), activation=activation))
                cin = p * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        self.stage_channels = [p * block.expansion for p in planes]
        he_init(self)
        if not isinstance(zero_init_residual, bool):
            raise ConfigError(f"zero_init_residual must be true or false, got {zero_init_residual!r}")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            if stages:
                maps.append(x)
        return torch.flatten(self.avgpool(x), 1), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


@BACKBONES.register("resnet18")
def resnet18(**kw) -> ResNet:
    """ResNet-18: BasicBlock × [2, 2, 2, 2] (He et al. 2016, Table 1)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


@BACKBONES.register("resnet34")
def resnet34(**kw) -> ResNet:
    """ResNet-34: BasicBlock × [3, 4, 6, 3] (He et al. 2016, Table 1)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


@BACKBONES.register("resnet50")
def resnet50(**kw) -> ResNet:
    """ResNet-50: Bottleneck × [3, 4, 6, 3] (He et al. 2016, Table 1)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kw)


for _factory in (resnet18, resnet34, resnet50):
    _factory.options = ("activation", "zero_init_residual")
