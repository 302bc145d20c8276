"""VGG-11 (Simonyan & Zisserman 2015, configuration A) with torchvision's module names (`features.N`,
`classifier.0`, `classifier.3`; torchvision's last layer `classifier.6` is our `fc`).

`classifier=true` (default) keeps VGG's own hidden fully-connected layers in the backbone, so `num_features` is
their width and the `main` head is VGG's last linear layer. `classifier=false` is paper 000's appendix B: the
Feature Refiner replaces VGG's fully-connected classifier (`heads=[fr]`, or `[main, fr]` for the gated linear).
`stem=cifar` is the authors' CIFAR VGG (LowDataGeneralization `vgg.py`, after chengyangfu/pytorch-vgg-cifar10):
no average pool to 7×7 (the 32×32 input leaves 1×1×512), hidden width 4096 (`active_learning.py`), no dropout,
convs N(0, 2/(9·C_out)) with zero biases.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]  # configuration A


class VGG(nn.Module):
    """Backbone: `features` (3×3 convs with biases, ReLU, 2×2 max-pools), then either VGG's hidden FC layers
    (`classifier`: Linear → ReLU → Dropout, twice) or a global average pool. `forward_features` → (pooled or
    hidden features, [the map after each max-pool])."""

    def __init__(self, config: list = VGG11, *, stem: str = "cifar", width: float = 1.0, in_channels: int = 3,
                 classifier: bool = True, hidden: int = 4096, batch_norm: bool = False,
                 dropout: float | None = None) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ConfigError(f"unknown stem {stem!r}; choose one of: cifar, imagenet")
        for key, value in (("classifier", classifier), ("batch_norm", batch_norm)):
            if not isinstance(value, bool):
                raise ConfigError(f"vgg {key} must be true or false, got {value!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"vgg hidden must be a positive integer (VGG's FC width), got {hidden!r}")
        dropout = (0.0 if stem == "cifar" else 0.5) if dropout is None else dropout
        if not 0 <= float(dropout) < 1:
            raise ConfigError(f"vgg dropout must be in [0, 1), got {dropout!r}")
        self.stem_name = stem
        layers: list[nn.Module] = []
        c, self.stage_channels, self._ends = in_channels, [], []
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                self._ends.append(len(layers) - 1)
                self.stage_channels.append(c)
                continue
            out = max(1, round(v * width))
            layers.append(nn.Conv2d(c, out, 3, padding=1))
            layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        pool = 7 if stem == "imagenet" and classifier else 1  # torchvision pools to 7×7 before its classifier
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.num_features = c
        if classifier:
            h = max(1, round(hidden * width))
            self.classifier = nn.Sequential(nn.Linear(c * pool * pool, h), nn.ReLU(True), nn.Dropout(float(dropout)),
                                            nn.Linear(h, h), nn.ReLU(True), nn.Dropout(float(dropout)))
            self.num_features = h
        else:
            self.classifier = None
        self._init(stem)

    def _init(self, stem: str) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if stem == "cifar":  # the authors' VGG.initialize_model
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                else:  # torchvision's
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and stem == "imagenet":
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if stages and i in self._ends:
                maps.append(x)
        x = torch.flatten(self.avgpool(x), 1)
        return (x if self.classifier is None else self.classifier(x)), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    @staticmethod
    def foreign_key(key: str) -> str:
        """A torchvision VGG key → ours: its last layer `classifier.6` is our `fc`."""
        return "fc." + key[len("classifier.6."):] if key.startswith("classifier.6.") else key


@BACKBONES.register("vgg11")
def vgg11(**kw) -> VGG:
    """VGG-11 (configuration A, Simonyan & Zisserman 2015, Table 1); `classifier=false`: paper 000, appendix B."""
    return VGG(VGG11, **kw)


vgg11.options = ("classifier", "hidden", "batch_norm", "dropout")
