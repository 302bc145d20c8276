"""EfficientNet-B3 (Tan & Le 2019) with torchvision's module names (`features.N...`), so a torchvision checkpoint
loads (its `classifier.1` is our `fc`; its `classifier.0` is the dropout we apply to the pooled features).

`stem=cifar` is the network paper 000 trains on 32×32 CIFAR (appendix A table: 10,711,602 parameters with 10
classes): the authors' `EfficientNetB3` builds lukemelas' EfficientNet-PyTorch `efficientnet-b3_small`
(lowdataregime/classification/model/convolutional/efficientnet.py + _network/efficientnet_utils.py), i.e. the
ImageNet B3 unchanged (stride-2 stem, 5 stride-2 stages, a 1×1 map at the end) with TensorFlow "same" padding,
BatchNorm eps 1e-3 / momentum 0.01, PyTorch's default initialisation and no dropout before the linear head.
`stem=imagenet` is torchvision's `efficientnet_b3` (12,233,232 parameters with 1000 classes): symmetric padding,
default BatchNorm, dropout 0.3, He (fan_out) initialisation. Both have drop-connect 0.2 scaled by block index.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import BACKBONES

WIDTH, DEPTH, DROPOUT, DROP_CONNECT = 1.2, 1.4, 0.3, 0.2  # B3's coefficients (Tan & Le 2019, Table 1 scaling)
# (expansion, kernel, first stride, input channels, output channels, blocks) of B0, before scaling
STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def round_channels(c: float, divisor: int = 8) -> int:
    """Nearest multiple of `divisor` (at least `divisor`), never below 90 % of `c` (torchvision / lukemelas)."""
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * c else new


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding computed from the input size (asymmetric at stride 2), as in
    lukemelas' `Conv2dStaticSamePadding`; same parameters (and names) as nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class ConvBNAct(nn.Sequential):
    """conv (`0`), BN (`1`), SiLU (`2`, unless `act=False`): torchvision's Conv2dNormActivation layout."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True,
                 tf_same: bool = False) -> None:
        conv = (SameConv2d(cin, cout, k, stride, 0, groups=groups, bias=False) if tf_same and stride > 1 else
                nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False))
        bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01) if tf_same else nn.BatchNorm2d(cout)
        super().__init__(conv, bn, *([nn.SiLU(inplace=True)] if act else []))


class SqueezeExcitation(nn.Module):
    """x · sigmoid(fc2(SiLU(fc1(avgpool(x))))) with 1×1 convs (torchvision's names `fc1`, `fc2`)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class MBConv(nn.Module):
    """`block`: [1×1 expand], k×k depthwise (stride s), squeeze-excitation (input channels / 4), 1×1 project (no
    activation); `x +` (with row-wise drop-connect while training) when s = 1 and the width is kept."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, drop: float, tf_same: bool) -> None:
        super().__init__()
        hidden = round_channels(cin * expand)
        layers: list[nn.Module] = [ConvBNAct(cin, hidden, 1, tf_same=tf_same)] if hidden != cin else []
        layers += [ConvBNAct(hidden, hidden, k, stride, groups=hidden, tf_same=tf_same),
                   SqueezeExcitation(hidden, max(1, cin // 4)),
                   ConvBNAct(hidden, cout, 1, act=False, tf_same=tf_same)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop = drop
        self.out_channels = cout

    def remove_shortcut(self) -> None:
        """Drop the addition `out + x` (transform `no_residual`)."""
        self.residual = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if not self.residual:
            return out
        if self.training and self.drop > 0:
            keep = 1.0 - self.drop
            mask = torch.empty((out.shape[0],) + (1,) * (out.dim() - 1), dtype=out.dtype, device=out.device)
            out = out * mask.bernoulli_(keep).div_(keep)
        return out + x


class EfficientNetB3(nn.Module):
    """Backbone only: `features.0` stem (3×3, stride 2), `features.1..7` the seven stages, `features.8` the 1×1
    conv to `num_features` (1536), then global average pooling. `forward_features` → (pooled, [map after each of
    the 7 stages]); `stem=imagenet` applies torchvision's dropout 0.3 to the pooled features."""

    def __init__(self, *, stem: str = "cifar", width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            from ..errors import ConfigError
            raise ConfigError(f"unknown stem {stem!r}; choose one of: cifar, imagenet")
        self.stem_name = stem
        tf_same = stem == "cifar"
        ch = lambda c: round_channels(c * WIDTH * width)  # noqa: E731
        total = sum(math.ceil(n * DEPTH) for *_, n in STAGES)
        layers: list[nn.Module] = [ConvBNAct(in_channels, ch(STAGES[0][3]), 3, 2, tf_same=tf_same)]
        index = 0
        for t, k, s, cin, cout, n in STAGES:
            blocks = []
            for j in range(math.ceil(n * DEPTH)):
                blocks.append(MBConv(ch(cin) if j == 0 else ch(cout), ch(cout), t, k, s if j == 0 else 1,
                                     DROP_CONNECT * index / total, tf_same))
                index += 1
            layers.append(nn.Sequential(*blocks))
        last_in = ch(STAGES[-1][4])
        self.num_features = 4 * last_in
        layers.append(ConvBNAct(last_in, self.num_features, 1, tf_same=tf_same))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.stage_channels = [ch(c) for *_, c, _n in STAGES]
        if stem == "imagenet":
            self.dropout = nn.Dropout(DROPOUT)
            for m in self.modules():  # torchvision's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if stages and 1 <= i <= len(STAGES):
                maps.append(x)
        pooled = torch.flatten(self.avgpool(x), 1)
        return (self.dropout(pooled) if self.stem_name == "imagenet" else pooled), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    @staticmethod
    def foreign_key(key: str) -> str:
        """A torchvision EfficientNet key → ours: its `classifier.1` (after the dropout `classifier.0`) is our `fc`."""
        return "fc." + key[len("classifier.1."):] if key.startswith("classifier.1.") else key


@BACKBONES.register("efficientnet_b3")
def efficientnet_b3(**kw) -> EfficientNetB3:
    """EfficientNet-B3; `stem=cifar` is paper 000's (authors' lukemelas `efficientnet-b3_small`, appendix A),
    `stem=imagenet` torchvision's."""
    return EfficientNetB3(**kw)
