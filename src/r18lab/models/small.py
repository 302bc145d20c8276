"""The small backbones of paper 002d (Ortiz-Jiménez et al., NeurIPS 2021, `models/jax`): an MLP 100-100 and LeNet
(spec 002d §1 "Model"); the classifier's `fc` is their last dense layer (one logit in every config of the paper)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES
from .activations import make_activation

def _check_common(backbone: str, stem: str, image_size: object) -> int:
    if stem != "cifar":
        raise ConfigError(f"backbone {backbone} has no {stem!r} stem (it takes the image as is); set stem=cifar")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"{backbone} image_size must be a positive integer (the input's height = width), "
                          f"got {image_size!r}")
    return image_size


def _scaled(c: int, width: float) -> int:
    return max(1, round(c * width))


class MLP(nn.Module):
    """Flatten → fc1 (→ 100) → act → fc2 (→ 100) → act; the classifier's `fc` is the output layer (paper 002d
    `features: [100, 100, 1]`). `forward_features` → (h2, [h1, h2] when stages)."""

    def __init__(self, activation: str = "relu", image_size: int = 32, *, stem: str = "cifar",
                 width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        image_size = _check_common("mlp", stem, image_size)
        h1, h2 = _scaled(100, width), _scaled(100, width)
        self.image_size, self.activation, self.stem_name = image_size, activation, stem
        self.in_features = in_channels * image_size * image_size
        self.fc1 = nn.Linear(self.in_features, h1)
        self.act1 = make_activation(activation)
        self.fc2 = nn.Linear(h1, h2)
        self.act2 = make_activation(activation)
        self.num_features = h2
        self.stage_channels = [h1, h2]

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = torch.flatten(x, 1)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"mlp expects {self.in_features} inputs per image (in_channels·image_size²), got "
                             f"{x.shape[-1]}; set the model's image_size / in_channels to the data's")
        h1 = self.act1(self.fc1(x))
        h2 = self.act2(self.fc2(h1))
        return h2, ([h1, h2] if stages else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class LeNet(nn.Module):
    """conv1 5×5 (6, SAME) → act → avg-pool 2 → conv2 5×5 (16, SAME) → act → avg-pool 2 → flatten → fc1 (120) →
    act → fc2 (84) → act; the classifier's `fc` is the output layer (paper 002d `models/jax`). Flatten order is
    torch's (C, H, W), Flax's is (H, W, C): same function class, a permuted fc1. `forward_features` → (fc2
    activation, [pooled conv1 map, pooled conv2 map] when stages)."""

    def __init__(self, activation: str = "relu", image_size: int = 32, *, stem: str = "cifar",
                 width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        image_size = _check_common("lenet", stem, image_size)
        if image_size % 4:
            raise ConfigError(f"lenet image_size must be divisible by 4 (two 2×2 poolings), got {image_size}; "
                              "resize the images or pick another image_size")
        c1, c2, d1, d2 = (_scaled(c, width) for c in (6, 16, 120, 84))
        self.image_size, self.activation, self.stem_name = image_size, activation, stem
        self.conv1 = nn.Conv2d(in_channels, c1, 5, 1, 2)
        self.act1 = make_activation(activation)
        self.pool1 = nn.AvgPool2d(2, 2)
        self.conv2 = nn.Conv2d(c1, c2, 5, 1, 2)
        self.act2 = make_activation(activation)
        self.pool2 = nn.AvgPool2d(2, 2)
        self.fc1 = nn.Linear(c2 * (image_size // 4) ** 2, d1)
        self.act3 = make_activation(activation)
        self.fc2 = nn.Linear(d1, d2)
        self.act4 = make_activation(activation)
        self.num_features = d2
        self.stage_channels = [c1, c2]

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m1 = self.pool1(self.act1(self.conv1(x)))
        m2 = self.pool2(self.act2(self.conv2(m1)))
        h = self.act3(self.fc1(torch.flatten(m2, 1)))
        h = self.act4(self.fc2(h))
        return h, ([m1, m2] if stages else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


@BACKBONES.register("mlp")
def mlp(activation: str = "relu", image_size: int = 32, **kw) -> MLP:
    """MLP 100-100 of paper 002d (`features: [100, 100, 1]`, ReLU; spec 002d §1); PyTorch default init."""
    return MLP(activation, image_size, **kw)


mlp.options = ("activation", "image_size")


@BACKBONES.register("lenet")
def lenet(activation: str = "relu", image_size: int = 32, **kw) -> LeNet:
    """LeNet of paper 002d (SAME 5×5 convs 6/16, avg-pool, dense 120/84, ReLU; spec 002d §1); PyTorch default init."""
    return LeNet(activation, image_size, **kw)


lenet.options = ("activation", "image_size")
