"""Vision Transformer (Dosovitskiy et al. 2021) with timm's names (`cls_token`, `pos_embed`, `patch_embed.proj`,
`blocks.N.attn.qkv`, `blocks.N.mlp.fc1`, `norm`; timm's `head` is our `fc`).

The default size is ViT-B (D = 768, 12 blocks, 12 heads, MLP 3072; paper Table 1): patch 16 at 224×224
(`stem=imagenet`, exactly timm's / torchvision's `vit_b_16`, 86,567,656 parameters with 1,000 classes) and patch 4
at 32×32 (`stem=cifar`: 64 patch tokens + the class token; patch 16 would leave 4). `width` scales D and the MLP
and keeps 64 dimensions per attention head (width ¼ is ViT-Ti: D = 192, 3 heads). Paper 000 reports "ViT-B16"
trained from scratch (Figure 4, appendix E); appendix A.3, which named the library, is lost.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..registry import BACKBONES
from .tokens import (LN_EPS, Mlp, PatchEmbed, check_token_options, stage_blocks, timm_head_key,
                     tokens_to_map)


class Attention(nn.Module):
    """Multi-head self-attention, softmax(QKᵀ/√d_h)V per head, heads concatenated → proj (Vaswani et al. 2017)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x)) (Dosovitskiy et al. 2021, eq. 2–3)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Backbone: patch embedding, class token, learned position embedding → blocks → LayerNorm → the class
    token (`num_features` = D). `forward_features` → (class token, [the patch tokens after the last block of
    each quarter of the depth, as (B, D, h, w) maps])."""

    def __init__(self, *, stem: str = "cifar", width: float = 1.0, in_channels: int = 3, dim: int = 768,
                 depth: int = 12, num_heads: int | None = None, mlp_ratio: float = 4.0, patch_size: int | None = None,
                 image_size: int | None = None) -> None:
        super().__init__()
        patch_size = patch_size if patch_size is not None else (4 if stem == "cifar" else 16)
        image_size = image_size if image_size is not None else (32 if stem == "cifar" else 224)
        d = max(1, round(dim * width))
        heads = num_heads if num_heads is not None else max(1, d // 64)
        check_token_options("vit", stem, dim=dim, depth=depth, num_heads=heads, patch_size=patch_size,
                            image_size=image_size)
        if image_size % patch_size:
            raise ConfigError(f"vit image_size {image_size} is not a multiple of patch_size {patch_size}")
        if d % heads:
            raise ConfigError(f"vit width {d} (dim × width) is not divisible by num_heads={heads}; choose "
                              f"num_heads dividing it")
        self.stem_name = stem
        side = image_size // patch_size
        self.grid = (side, side)
        self.patch_embed = PatchEmbed(patch_size, in_channels, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side + 1, d))
        self.blocks = nn.Sequential(*[Block(d, heads, int(d * mlp_ratio)) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.num_features = d
        self._stage_ends = stage_blocks(depth)
        self.stage_channels = [d] * len(self._stage_ends)
        self._init()

    def _init(self) -> None:
        """timm's default ViT init: position embedding and Linear weights truncated N(0, 0.02²), Linear biases 0,
        class token N(0, 1e-6²); the patch conv keeps PyTorch's default."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, stages: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(x)
        if x.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(f"vit was built for {self.grid[0] * self.patch_embed.patch_size}-pixel images "
                             f"({self.pos_embed.shape[1] - 1} patches) and got {x.shape[1]} patches; set "
                             f"model.options.image_size to the data's size")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if stages and i in self._stage_ends:
                maps.append(tokens_to_map(x[:, 1:], self.grid))
        return self.norm(x)[:, 0], maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    foreign_key = staticmethod(timm_head_key)


@BACKBONES.register("vit")
def vit(**kw) -> VisionTransformer:
    """ViT, ViT-B by default (Dosovitskiy et al. 2021, Table 1); patch 4 at CIFAR size, 16 at ImageNet size."""
    return VisionTransformer(**kw)


vit.options = ("dim", "depth", "num_heads", "mlp_ratio", "patch_size", "image_size")
