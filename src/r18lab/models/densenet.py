"""DenseNet-121 (Huang et al. 2017, DenseNet-BC) with torchvision's module names (`features.conv0`,
`features.denseblockN.denselayerM.conv1`, `features.transitionN`, `features.norm5`; torchvision's `classifier` is
our `fc`).

Both layouts keep torchvision's 7×7/2 stem and max-pool: the authors of paper 000 train exactly this network on
32×32 CIFAR (LowDataGeneralization, `densenet_backbone.py`), and their head is `Linear(1024, C, bias=False)`
(`densenet.py`), which is what gives the appendix count 6,964,096 = 6,953,856 + 1024·10. `fc_bias` says so to the
classifier; `stem=imagenet` keeps torchvision's biased classifier (7,978,856 parameters at 1000 classes).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES


class DenseLayer(nn.Module):
    """BN → ReLU → 1×1 conv (bn_size·k) → BN → ReLU → 3×3 conv (k); output concatenated to its input."""

    def __init__(self, cin: int, growth: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.cat([x, out], 1)


class DenseBlock(nn.Sequential):
    """`n` dense layers (`denselayer1..n`), each adding `growth` channels."""

    def __init__(self, n: int, cin: int, growth: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bn_size, drop_rate))


class Transition(nn.Sequential):
    """BN → ReLU → 1×1 conv (halves the channels) → 2×2 average pool, stride 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """Backbone only: `features` (stem, 4 dense blocks, 3 transitions, norm5) → ReLU → global average pool.
    `forward_features` → (pooled, [the output of each dense block])."""

    def __init__(self, block_config: tuple[int, ...] = (6, 12, 24, 16), growth_rate: int = 32,
                 num_init_features: int = 64, bn_size: int = 4, *, stem: str = "cifar", width: float = 1.0,
                 in_channels: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ConfigError(f"unknown stem {stem!r}; choose one of: cifar, imagenet")
        if not 0 <= float(drop_rate) < 1:
            raise ConfigError(f"densenet drop_rate must be in [0, 1), got {drop_rate!r}")
        growth = max(1, round(growth_rate * width))
        c = max(1, round(num_init_features * width))
        self.stem_name = stem
        self.fc_bias = stem == "imagenet"  # paper 000's CIFAR head is bias-free (authors' densenet.py)
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(in_channels, c, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(c))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        self.stage_channels = []
        for i, n in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size, drop_rate))
            c += n * growth
            self.stage_channels.append(c)
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        for name, layer in self.features.named_children():
            x = layer(x)
            if stages and name.startswith("denseblock"):
                maps.append(x)
        return torch.flatten(self.avgpool(self.relu(x)), 1), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    @staticmethod
    def foreign_key(key: str) -> str:
        """A torchvision DenseNet key → ours: `classifier.*` is our `fc.*`; the published files' old layer names
        (`denselayer1.norm.1.weight`) become `denselayer1.norm1.weight`, as torchvision's own loader renames them."""
        if key.startswith("classifier."):
            return "fc." + key[len("classifier."):]
        return OLD_LAYER_NAME.sub(r"\1\2", key)


#: torchvision `densenet._load_state_dict`'s pattern for the pre-0.4 names of the published weights
OLD_LAYER_NAME = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


@BACKBONES.register("densenet121")
def densenet121(**kw) -> DenseNet:
    """DenseNet-121: k = 32, blocks (6, 12, 24, 16), 64 stem channels, bn_size 4 (Huang et al. 2017, Table 1)."""
    return DenseNet((6, 12, 24, 16), 32, 64, 4, **kw)


densenet121.options = ("drop_rate",)
