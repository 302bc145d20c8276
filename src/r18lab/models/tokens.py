"""Building blocks of the patch-token backbones (MLP-Mixer, ViT), with timm's module names so timm checkpoints
map key for key: `PatchEmbed.proj`, `Mlp.fc1` / `Mlp.fc2`."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

#: timm's LayerNorm epsilon for Mixer and ViT (`partial(nn.LayerNorm, eps=1e-6)`)
LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → D-dim tokens by one strided conv (Dosovitskiy et al. 2021, eq. 1):
    (B, C, H, W) → (B, HW/p², D), row-major over the patch grid."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of patch_size {p}; "
                             f"resize the data (data.resize) or set model.options.patch_size")
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Linear → GELU → Linear (Tolstikhin et al. 2021, eq. 1; Dosovitskiy et al. 2021, eq. 3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def check_token_options(kind: str, stem: str, **values: int) -> None:
    """One-line ConfigError for an unknown stem or a non-positive integer size."""
    if stem not in ("cifar", "imagenet"):
        raise ConfigError(f"unknown stem {stem!r}; choose one of: cifar, imagenet")
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{kind} {key} must be a positive integer, got {v!r}")


def stage_blocks(depth: int, stages: int = 4) -> list[int]:
    """Indices of the blocks whose outputs are the stage maps: the last block of each of `stages` equal parts
    (depth 12 → blocks 2, 5, 8, 11), so heads built for four ResNet stages find four maps."""
    return sorted({max(0, math.ceil(depth * (k + 1) / stages) - 1) for k in range(stages)})


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens (B, h·w, D), row-major over the patch grid (h, w) → a feature map (B, D, h, w), as the stage
    maps of convolutional backbones."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def timm_head_key(key: str) -> str:
    """A timm Mixer / ViT state-dict key → ours: timm's classifier `head` is our `fc` (the `foreign_key` of both)."""
    return "fc." + key[len("head."):] if key.startswith("head.") else key
