"""MLP-Mixer (Tolstikhin et al. 2021) with timm's module names (`stem.proj`, `blocks.N.norm1`,
`blocks.N.mlp_tokens.fc1`, `blocks.N.mlp_channels.fc2`, `norm`; timm's `head` is our `fc`).

The default size is Mixer-S (paper Table 10: D = 512, 8 blocks, token MLP 256, channel MLP 2048): patch 16 at
224×224 (`stem=imagenet`, exactly timm's `mixer_s16_224`, 18,528,264 parameters with 1,000 classes) and patch 4
at 32×32 (`stem=cifar`: 64 tokens, as the from-scratch CIFAR Mixers use). `width` scales D and both MLPs.
Paper 000 compares against an MLP-Mixer trained from scratch (sec. 3.1, Figure 4); its appendix A.3 names the
library used, and that text is lost, so the size is ours and is stated in `recipes/mixer_vit_cifar10.yaml`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES
from .init import lecun_normal_
from .tokens import (LN_EPS, Mlp, PatchEmbed, check_token_options, stage_blocks, timm_head_key,
                     tokens_to_map)


class MixerBlock(nn.Module):
    """x + MLP_tokens(LN(x)ᵀ)ᵀ, then x + MLP_channels(LN(x)) (Tolstikhin et al. 2021, eq. 1)."""

    def __init__(self, dim: int, tokens: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_tokens = Mlp(tokens, token_hidden)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_channels = Mlp(dim, channel_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(nn.Module):
    """Backbone: patch stem → Mixer blocks → LayerNorm → mean over tokens. `forward_features` → (pooled, [the
    token grid after the last block of each quarter of the depth, as (B, D, h, w) maps])."""

    def __init__(self, *, stem: str = "cifar", width: float = 1.0, in_channels: int = 3, dim: int = 512,
                 depth: int = 8, patch_size: int | None = None, image_size: int | None = None,
                 token_ratio: float = 0.5, channel_ratio: float = 4.0) -> None:
        super().__init__()
        patch_size = patch_size if patch_size is not None else (4 if stem == "cifar" else 16)
        image_size = image_size if image_size is not None else (32 if stem == "cifar" else 224)
        check_token_options("mlp_mixer", stem, dim=dim, depth=depth, patch_size=patch_size, image_size=image_size)
        if image_size % patch_size:
            raise ConfigError(f"mlp_mixer image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.stem_name = stem
        d = max(1, round(dim * width))
        side = image_size // patch_size
        self.grid = (side, side)
        self.stem = PatchEmbed(patch_size, in_channels, d)
        self.blocks = nn.Sequential(*[MixerBlock(d, side * side, int(token_ratio * d), int(channel_ratio * d))
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.num_features = d
        self._stage_ends = stage_blocks(depth)
        self.stage_channels = [d] * len(self._stage_ends)
        self._init()

    def _init(self) -> None:
        """timm's `_init_weights` for Mixer (after the JAX reference): Linear xavier-uniform with zero biases, but
        MLP biases N(0, 1e-6); the patch stem lecun-normal; LayerNorm γ = 1, β = 0."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6) if ".mlp_" in f".{name}" else nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                lecun_normal_(m.weight.data, m.weight[0].numel())
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        if x.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(f"mlp_mixer was built for {self.grid[0] * self.stem.patch_size}-pixel images "
                             f"({self.grid[0]}×{self.grid[1]} patches) and got {x.shape[1]} patches; set "
                             f"model.options.image_size to the data's size")
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if stages and i in self._stage_ends:
                maps.append(tokens_to_map(x, self.grid))
        return self.norm(x).mean(dim=1), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    foreign_key = staticmethod(timm_head_key)


@BACKBONES.register("mlp_mixer")
def mlp_mixer(**kw) -> MlpMixer:
    """MLP-Mixer, Mixer-S by default (Tolstikhin et al. 2021, Table 10); patch 4 at CIFAR size, 16 at ImageNet."""
    return MlpMixer(**kw)


mlp_mixer.options = ("dim", "depth", "patch_size", "image_size", "token_ratio", "channel_ratio")
