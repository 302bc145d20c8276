"""Gramian-attention heads (paper 004, sec. 2.2; exact widths from spec 004 §A–B): `ga`, its learned-token
ablation `ca_token`, and the parameter-matched multi-head GAP-FC baseline `multi_fc`.

A `ga` head = one multi-level fuser over the four stage maps, shared by `count` branches; each branch turns the
fused map into a query token (the normalised Gram matrix of a c-channel projection), lets it attend to the
fused map's positions in one class-attention block and classifies it. `ca_token` is the same with a learned
token as the query (CaiT). Every branch's logits are reported as `<head>.<i>`; the head's own logits combine
them (`combine`: `sum` as the reference code, or `mean`; argmax is the same).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import HEADS
from .heads import Head
from .resnet import BasicBlock

COMBINE_MODES = ("sum", "mean")
GRAM_BLOCKS = ("convnext", "basic", "none")
GRAM_DTYPES = ("auto", "float64", "float32")


# -- pure maths --------------------------------------------------------------------------------------------
def combine_logits(logits: Sequence[torch.Tensor], mode: str = "sum") -> torch.Tensor:
    """Σ_k z_k (`sum`, the reference's train and eval output, spec 004 §A.7) or (1/H)·Σ_k z_k (`mean`)."""
    total = torch.stack(list(logits)).sum(0)
    return total if mode == "sum" else total / len(logits)


def gram_vector(x: torch.Tensor, index: torch.Tensor | None = None, dtype: torch.dtype | None = None
                ) -> torch.Tensor:
    """L2-normalised upper triangle (row-major, i ≤ j) of G = (X/H)(X/H)ᵀ/(H·W), X = x as B×c×HW (spec 004 §A.3)."""
    b, c, h, w = x.shape
    with _autocast_off(x):
        u = (x / h).to(dtype or x.dtype).reshape(b, c, h * w)
        gram = torch.bmm(u, u.transpose(1, 2)) / (h * w)
        flat_index = upper_triangle_index(c, x.device) if index is None else index
        upper = gram.reshape(b, c * c)[:, flat_index]
        upper = F.normalize(upper, dim=1, eps=1e-12)
    return upper.to(torch.promote_types(x.dtype, torch.float32))


def upper_triangle_index(c: int, device: torch.device | None = None) -> torch.Tensor:
    """Flat indices i·c + j of a c×c matrix's entries with i ≤ j, row-major: c(c+1)/2 of them (spec 004 §A.3)."""
    rows, cols = torch.triu_indices(c, c, device=device)
    return rows * c + cols


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channels viewed as (C/g, g) and transposed, as the reference's `channel_shuffle` (ShuffleNet's inverse; §A.5)."""
    b, ch = x.shape[:2]
    return x.reshape(b, ch // groups, groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def se_reduced_channels(channels: int, ratio: float = 0.25, divisor: int = 8) -> int:
    """timm's SE width make_divisible(ratio·channels, 8, round_limit=0): max(8, ⌊ratio·ch + 4⌋ rounded down to 8)."""
    return max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)


def fuser_param_count(in_channels: int, dim: int) -> int:
    """SE-bottleneck in → D, p = D/4, r = SE width: in·p + 9p² + p·D + 2·p·r + r + p + 4p + 4D + in·D + D (spec 004 §D)."""
    p = dim // 4
    r = se_reduced_channels(p)
    return in_channels * p + 2 * p + 9 * p * p + 2 * p + (2 * p * r + r + p) + p * dim + 2 * dim \
        + (in_channels * dim + dim) + 2 * dim


def branch_param_count(dim: int, num_classes: int, *, gram_dim: int | None, block: str = "convnext",
                       attn_dim: int | None = None, groups: int = 8) -> int:
    """One branch (spec 004 §D): [D·c + 3c + block + c(c+1)/2·D/g + 3D, or D for a learned token] + 3·D·d_a
    + d_a·D + D + 4D + 2D² + 5D + 2D + D·K + K; block = 8c² + 58c (convnext), 18c² + 4c (basic), 0 (none)."""
    d, k, d_a = dim, num_classes, attn_dim or dim // 4
    if gram_dim is None:
        query = d
    else:
        c = gram_dim
        blocks = {"convnext": 8 * c * c + 58 * c, "basic": 18 * c * c + 4 * c, "none": 0}
        query = d * c + 3 * c + blocks[block] + c * (c + 1) // 2 * d // groups + 3 * d
    attention = 3 * d * d_a + (d_a * d + d) + 4 * d + 2 * d * d + 5 * d + 2 * d
    return query + attention + d * k + k


# -- building blocks ---------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    """x·σ(W₂ ReLU(W₁ mean_hw(x) + b₁) + b₂), 1×1 convs with biases (timm `SEModule`, rd_ratio ¼)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = se_reduced_channels(channels)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class SEBottleneck(nn.Module):
    """relu(BN(1×1)∘SE∘relu(BN(3×3))∘relu(BN(1×1))(x) + BN(1×1 conv with bias)(x)), width D/4 (spec 004 §A.1c)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        planes = out_channels // 4
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcite(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(F.relu(self.bn2(self.conv2(out))))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class MultiLevelFuser(nn.Module):
    """concat(avgpool→stage-3 size(X1, X2), X3, bilinear→stage-3 size(X4)) → SE-bottleneck to D (spec 004 §B.2–3).

    The reference upsamples X4 by ×2, which is the same resampling whenever stage 3 is twice stage 4 (CIFAR
    32² → 8² and 4², ImageNet 224² → 14² and 7²); other sizes (28² → 7² and 4²) are resampled to stage 3's."""

    def __init__(self, stage_channels: Sequence[int], dim: int, owner: str) -> None:
        super().__init__()
        self.stage_channels, self.owner = list(stage_channels), owner
        self.block = SEBottleneck(sum(self.stage_channels), dim)

    def check(self, stages: list[torch.Tensor]) -> None:
        """One line when the stage maps are not the four maps, of the widths and sizes, this fuser was built for."""
        if len(stages) != len(self.stage_channels):
            raise ConfigError(f"head {self.owner} fuses {len(self.stage_channels)} stage maps but the backbone gives "
                              f"{len(stages)}; use a four-stage backbone (resnet18, resnet34, resnet50)")
        got = [int(t.shape[1]) for t in stages]
        if got != self.stage_channels:
            raise ConfigError(f"head {self.owner} was built for stage widths {self.stage_channels} but the backbone "
                              f"gives {got}; set {self.owner}_stage_channels={got}")
        (h1, w1), (h2, w2), (h3, w3) = [tuple(t.shape[2:]) for t in stages[:3]]
        if min(h1, h2) < h3 or min(w1, w2) < w3:
            raise ConfigError(f"head {self.owner}: stage maps {h1}×{w1} and {h2}×{w2} are smaller than stage 3's "
                              f"{h3}×{w3}, which the fuser pools them to; use a backbone whose stages shrink "
                              f"the maps in order (resnet18, resnet34, resnet50)")

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        self.check(stages)
        x1, x2, x3, x4 = stages
        size = x3.shape[2:]
        up = F.interpolate(x4, size=size, mode="bilinear", align_corners=False)  # = ×2 when h₃ = 2·h₄
        return self.block(torch.cat((F.adaptive_avg_pool2d(x1, size), F.adaptive_avg_pool2d(x2, size), x3, up), 1))


class ConvNeXtBlock(nn.Module):
    """x + γ·Linear(4c→c)(GELU(Linear(c→4c)(LN(dwconv7×7(x))))), γ init 1e-6 (ConvNeXt; spec 004 §A.2)."""

    def __init__(self, channels: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class GramToken(nn.Module):
    """Query = BN(grouped 1×1 conv(gram_vector(block(BN(1×1 conv D→c)(X))))) as a B×1×D token (spec 004 §B.4)."""

    def __init__(self, dim: int, gram_dim: int, block: str, groups: int, gram_dtype: str) -> None:
        super().__init__()
        self.gram_dtype = gram_dtype
        self.contraction = nn.Sequential(nn.Conv2d(dim, gram_dim, 1), nn.BatchNorm2d(gram_dim))
        self.block = {"convnext": lambda: ConvNeXtBlock(gram_dim), "basic": lambda: BasicBlock(gram_dim, gram_dim),
                      "none": nn.Identity}[block]()
        pairs = gram_dim * (gram_dim + 1) // 2
        self.embedding = nn.Sequential(nn.Conv2d(pairs, dim, 1, groups=groups), nn.BatchNorm2d(dim))
        self.register_buffer("index", upper_triangle_index(gram_dim), persistent=False)

    def compute_dtype(self, batch: int, device: torch.device) -> torch.dtype | None:
        """float64 when asked, or (`auto`) while training with batch < 128 as the reference (spec 004 §A.3)."""
        if self.gram_dtype == "float64" or (self.gram_dtype == "auto" and self.training and batch < 128
                                            and device.type != "mps"):
            return torch.float64
        return torch.float32 if self.gram_dtype == "float32" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.block(self.contraction(x))
        g = gram_vector(u, self.index, self.compute_dtype(u.shape[0], u.device))
        return self.embedding(g.to(u.dtype)[:, :, None, None]).flatten(1)[:, None, :]


class LearnedToken(nn.Module):
    """Query = one learned D-vector shared by all samples, trunc-normal(0.02) init (CaiT class token)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.token.expand(x.shape[0], -1, -1)


class ClassAttention(nn.Module):
    """Only the first token queries: softmax(q(t₀)·k(T)ᵀ/√(d_a/h))·v(T), h heads, q/k/v without bias, then proj."""

    def __init__(self, dim: int, attn_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, attn_dim, bias=False)
        self.k = nn.Linear(dim, attn_dim, bias=False)
        self.v = nn.Linear(dim, attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b = u.shape[0]
        split = lambda t: t.reshape(b, t.shape[1], self.num_heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.q(u[:, :1])), split(self.k(u)), split(self.v(u)))
        return self.proj(out.transpose(1, 2).reshape(b, 1, -1))


class GroupedMlp(nn.Module):
    """1×1 grouped conv D→4D, GELU, channel shuffle, 1×1 grouped conv 4D→D, biases on (reference `GroupConvMlp`)."""

    def __init__(self, dim: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.fc1 = nn.Conv2d(dim, 4 * dim, 1, groups=groups)
        self.fc2 = nn.Conv2d(4 * dim, dim, 1, groups=groups)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.transpose(1, 2)[..., None]  # B×1×D → B×D×1×1
        x = self.fc2(channel_shuffle(F.gelu(self.fc1(x)), self.groups))
        return x[..., 0].transpose(1, 2)


class ClassAttentionBlock(nn.Module):
    """t ← t + γ₁·Attn(LN([t; X])); t ← t + γ₂·MLP(LN(t)), γ init 1e-4, LN eps 1e-5 (CaiT; spec 004 §A.5)."""

    def __init__(self, dim: int, attn_dim: int, num_heads: int, mlp_groups: int, layer_scale: float = 1e-4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, attn_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GroupedMlp(dim, mlp_groups)
        self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        query = query + self.gamma_1 * self.attn(self.norm1(torch.cat((query, tokens), 1)))
        return query + self.gamma_2 * self.mlp(self.norm2(query))


class Branch(nn.Module):
    """One head of the ensemble: query token → class-attention block over the fused map → Linear(D→K)."""

    def __init__(self, query: nn.Module, attn: ClassAttentionBlock, fc: nn.Linear) -> None:
        super().__init__()
        self.query, self.attn, self.fc = query, attn, fc

    def forward(self, fused: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(tokens, self.query(fused))[:, 0])


def _init_weights(module: nn.Module) -> None:
    """trunc-normal(0.02) weights and zero biases for every Conv2d and Linear (reference `_init_weights`, §A.6)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# -- the heads ---------------------------------------------------------------------------------------------
def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


def _choice(value: object, choices: Sequence[str], what: str) -> str:
    value = "none" if value is None and "none" in choices else value
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def infer_stage_channels(num_features: int, owner: str) -> list[int]:
    """A ResNet's stage widths D/8, D/4, D/2, D from its pooled width D (the stages double; He et al. 2016)."""
    if num_features % 8:
        raise ConfigError(f"head {owner} cannot infer the stage widths from {num_features} features; set "
                          f"{owner}_stage_channels=[w1, w2, w3, w4] to the backbone's stage widths")
    return [num_features // 8, num_features // 4, num_features // 2, num_features]


class _AttentionHeads(Head):
    """Shared fuser + `count` branches; subclasses choose the query token (`_query`)."""

    needs_stages = True

    def __init__(self, num_features: int, num_classes: int, *, count: int, attn_dim: int | None, attn_heads: int,
                 mlp_groups: int, combine: str, stage_channels: Sequence[int] | None, name: str,
                 layer_scale: float = 1e-4) -> None:
        super().__init__()
        if isinstance(layer_scale, bool) or not isinstance(layer_scale, (int, float)) or not layer_scale > 0:
            raise ConfigError(f"{name}_layer_scale must be a number > 0 (CaiT's LayerScale init; 1e-4), "
                              f"got {layer_scale!r}")
        d = num_features
        count = _positive_int(count, f"{name}_count")
        self.combine = _choice(combine, COMBINE_MODES, f"{name}_combine")
        attn_dim = d // 4 if attn_dim is None else _positive_int(attn_dim, f"{name}_attn_dim")
        attn_heads = _positive_int(attn_heads, f"{name}_attn_heads")
        mlp_groups = _positive_int(mlp_groups, f"{name}_mlp_groups")
        if attn_dim % attn_heads:
            raise ConfigError(f"{name}_attn_dim={attn_dim} must be divisible by {name}_attn_heads={attn_heads}")
        if d % mlp_groups:
            raise ConfigError(f"{name}_mlp_groups={mlp_groups} must divide the feature width {d}")
        if stage_channels is None:
            stage_channels = infer_stage_channels(d, name)
        elif (isinstance(stage_channels, (str, bytes)) or len(stage_channels) != 4
              or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in stage_channels)):
            raise ConfigError(f"{name}_stage_channels must be four positive widths, got {stage_channels!r}")
        self.attn_dim, self.attn_heads, self.mlp_groups = attn_dim, attn_heads, mlp_groups
        self.sub_heads = tuple(str(i) for i in range(count))
        self.fuser = MultiLevelFuser(stage_channels, d, name)
        self.branches = nn.ModuleList(
            Branch(self._query(d), ClassAttentionBlock(d, attn_dim, attn_heads, mlp_groups, float(layer_scale)),
                   nn.Linear(d, num_classes))
            for _ in range(count))
        _init_weights(self)

    def _query(self, dim: int) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def forward(self, features: torch.Tensor, stages: list[torch.Tensor]) -> dict[str, object]:
        fused = self.fuser(stages)
        tokens = fused.flatten(2).transpose(1, 2)  # B×N×D, N = H₃·W₃ positions
        subs = {name: branch(fused, tokens) for name, branch in zip(self.sub_heads, self.branches)}
        return {"logits": combine_logits(list(subs.values()), self.combine), "sub": subs}


@HEADS.register("ga")
class GramianAttentionHeads(_AttentionHeads):
    """GA heads (paper 004, sec. 2.2; spec 004 §B): fuser + `count` branches whose query is the Gram token.

    Defaults: count 5 (released models), dim c = 128 and groups 8 (paper Table 1's best CIFAR row; 192 for the
    ImageNet stem as every released model), block `convnext` (released `gram_layer=True`), attn_dim D/4,
    attn_heads 8, mlp_groups 4, combine `sum`, gram_dtype `auto` (float64 while training with batch < 128).
    """

    stem_defaults = {"imagenet": {"dim": 192}}

    def __init__(self, num_features: int, num_classes: int, *, count: int = 5, dim: int = 128,
                 block: str = "convnext", groups: int = 8, attn_dim: int | None = None, attn_heads: int = 8,
                 mlp_groups: int = 4, combine: str = "sum", gram_dtype: str = "auto",
                 stage_channels: Sequence[int] | None = None, layer_scale: float = 1e-4) -> None:
        name = "ga"
        self.gram_dim = _positive_int(dim, f"{name}_dim")
        self.gram_block = _choice(block, GRAM_BLOCKS, f"{name}_block")
        self.groups = _positive_int(groups, f"{name}_groups")
        self.gram_dtype = _choice(gram_dtype, GRAM_DTYPES, f"{name}_gram_dtype")
        pairs = self.gram_dim * (self.gram_dim + 1) // 2
        if pairs % self.groups:
            raise ConfigError(f"{name}_dim={self.gram_dim} gives c(c+1)/2 = {pairs} Gram entries, not divisible by "
                              f"the projection's {name}_groups={self.groups}; choose a dim such as 32, 48, 64, 96, "
                              f"128, 192 or other {name}_groups")
        if num_features % self.groups:
            raise ConfigError(f"{name}_groups={self.groups} must divide the feature width {num_features}")
        super().__init__(num_features, num_classes, count=count, attn_dim=attn_dim, attn_heads=attn_heads,
                         mlp_groups=mlp_groups, combine=combine, stage_channels=stage_channels, name=name,
                         layer_scale=layer_scale)

    def _query(self, dim: int) -> nn.Module:
        return GramToken(dim, self.gram_dim, self.gram_block, self.groups, self.gram_dtype)


@HEADS.register("ca_token")
class ClassTokenHeads(_AttentionHeads):
    """The `ga` head with a learned class token as each branch's query (CaiT; paper 004 Table 2's "CaiT" rows).

    The token is the same for every image, so the input reaches the logits only through the LayerScale-d
    attention and MLP updates (γ init `layer_scale` = 1e-4): under plain SGD and a short schedule the head can stay
    at chance (measured: 1 epoch of CIFAR-10, SGD 0.1, 10.00 % at every seed); `layer_scale: 1` is the way out."""

    def __init__(self, num_features: int, num_classes: int, *, count: int = 5, attn_dim: int | None = None,
                 attn_heads: int = 8, mlp_groups: int = 4, combine: str = "sum",
                 stage_channels: Sequence[int] | None = None, layer_scale: float = 1e-4) -> None:
        super().__init__(num_features, num_classes, count=count, attn_dim=attn_dim, attn_heads=attn_heads,
                         mlp_groups=mlp_groups, combine=combine, stage_channels=stage_channels, name="ca_token",
                         layer_scale=layer_scale)

    def _query(self, dim: int) -> nn.Module:
        return LearnedToken(dim)


def matched_hidden(target: int, num_features: int, num_classes: int, count: int) -> int:
    """Hidden width h whose count·(h·(D + K + 3) + K) parameters lie nearest `target` (≥ 1)."""
    per_head = target / count - num_classes
    return max(1, round(per_head / (num_features + num_classes + 3)))


@HEADS.register("multi_fc")
class MultiLinearHeads(Head):
    """`count` GAP-FC classifiers on the pooled feature (paper 004 Table 2's "GAP-FC 1/10" baseline).

    `hidden` = h > 0 makes each Linear(D→h)→BN→ReLU→Linear(h→K) so that the baseline can match a GA head's
    parameters; `match_params` = N picks the h whose total lies nearest N (`matched_hidden`)."""

    def __init__(self, num_features: int, num_classes: int, *, count: int = 10, hidden: int = 0,
                 match_params: int | None = None, combine: str = "sum") -> None:
        super().__init__()
        count = _positive_int(count, "multi_fc_count")
        self.combine = _choice(combine, COMBINE_MODES, "multi_fc_combine")
        if match_params is not None:
            if hidden:
                raise ConfigError("multi_fc: set hidden or match_params, not both")
            hidden = matched_hidden(_positive_int(match_params, "multi_fc_match_params"), num_features,
                                    num_classes, count)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ConfigError(f"multi_fc_hidden must be an integer ≥ 0, got {hidden!r}")
        self.hidden = hidden

        def one() -> nn.Module:
            if not hidden:
                return nn.Linear(num_features, num_classes)
            return nn.Sequential(nn.Linear(num_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, num_classes))

        self.sub_heads = tuple(str(i) for i in range(count))
        self.classifiers = nn.ModuleList(one() for _ in range(count))

    def forward(self, features: torch.Tensor, stages: list[torch.Tensor]) -> dict[str, object]:
        subs = {name: fc(features) for name, fc in zip(self.sub_heads, self.classifiers)}
        return {"logits": combine_logits(list(subs.values()), self.combine), "sub": subs}


# -- helpers -----------------------------------------------------------------------------------------------
def _autocast_off(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast disabled on x's device inside the Gram step, so its dtype is the one chosen (no-op otherwise)."""
    kind = x.device.type
    try:
        enabled = torch.is_autocast_enabled(kind)
    except (RuntimeError, TypeError):
        enabled = False
    return torch.autocast(kind, enabled=False) if enabled else contextlib.nullcontext()
