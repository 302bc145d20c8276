"""Activations by name, shared by the backbones that offer a choice (ResNet, MLP, LeNet)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "gelu": lambda: nn.GELU(),  # exact erf form, torch's default
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # Flax's nn.gelu default (approximate=True)
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name: relu, gelu (exact erf, torch's default) or gelu_tanh (the tanh
    approximation, Flax's `nn.gelu` default). Nothing in place, so torch.func transforms apply."""
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ConfigError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}") from None
