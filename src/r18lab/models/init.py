"""Weight initialisation shared by the backbones."""
from __future__ import annotations

from torch import nn


def he_init(module: nn.Module) -> None:
    """Convs: He normal, fan_out, ReLU gain; BatchNorm: γ = 1, β = 0 (He et al. 2015; torchvision's ResNet and
    MobileNet-V2)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
