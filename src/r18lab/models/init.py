"""Weight initialisation shared by the backbones."""
from __future__ import annotations

import math

from torch import nn

from ..errors import ConfigError


def he_init(module: nn.Module) -> None:
    """Convs: He normal, fan_out, ReLU gain; BatchNorm: γ = 1, β = 0 (He et al. 2015; torchvision's ResNet and
    MobileNet-V2)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


#: std of a standard normal truncated to [−2, 2] (JAX's `variance_scaling` divides by it)
TRUNCATED_NORMAL_STD = 0.87962566103423978


def lecun_normal_(weight, fan_in: int) -> None:
    """w ~ N(0, 1/fan_in) truncated to ±2σ and rescaled to variance 1/fan_in: JAX's `lecun_normal`
    (`variance_scaling(1.0, "fan_in", "truncated_normal")`), Flax's default kernel init."""
    std = math.sqrt(1.0 / fan_in) / TRUNCATED_NORMAL_STD
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def flax_lecun_init(module: nn.Module) -> None:
    """Flax's defaults (spec 002d §1): every Conv/Linear kernel lecun-normal (fan_in = C_in/groups·k_h·k_w), every
    bias 0; norm layers keep their own init (γ = 1, or 0 where `zero_init_residual` set it)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            lecun_normal_(m.weight.data, fan_in)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


#: `model.init`: how the built classifier's weights are (re)initialised; `default` keeps each layer's own
INITS = {"default": None, "flax_lecun": flax_lecun_init}


def apply_init(module: nn.Module, name: str) -> None:
    """Re-initialise `module` with the scheme `name` (see INITS)."""
    if name not in INITS:
        raise ConfigError(f"unknown model.init {name!r}; choose one of: {', '.join(INITS)}")
    if INITS[name] is not None:
        INITS[name](module)
