"""Classification heads on the pooled backbone feature; each is looked up by name in HEADS."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..registry import HEADS


class Head(nn.Module):
    """A head maps (pooled features, stage maps) to logits, or to a mapping {"logits": T, "sub": {name: T},
    "aux": {name: T}} whose `sub` names are `sub_heads` and `aux` names are `aux_outputs` (declared, in order).

    The classifier reports sub-logits as `<head>.<sub>` beside the head's own logits and aux outputs as
    `<head>.<aux>` in `ModelOutput.aux`; `needs_stages` asks for the stage maps.

    A head with `produces_logits = False` (e.g. `hint`, FitNets' regressor) computes aux outputs only: it returns
    {"aux": {...}} (no "logits", no "sub"), is left out of `Classifier.head_names` / `logit_names` (so neither
    `heads: all` in an objective nor evaluation sees it) and is listed in `Classifier.all_head_names` (what
    `export --keep` may name).
    """

    needs_stages = False
    #: False for a head that returns only aux outputs (see the class docstring).
    produces_logits = True
    #: True when this head teaches the `main` head through the gradient gate (paper 000, sec. 2.1).
    gates_main = False
    #: names of the per-sub-head logits the head returns under "sub" (e.g. one per Gramian head).
    sub_heads: tuple[str, ...] = ()
    #: names of the auxiliary tensors the head returns under "aux" (e.g. a predicted loss).
    aux_outputs: tuple[str, ...] = ()
    #: option defaults per backbone stem, applied before the user's options.
    stem_defaults: dict[str, dict] = {}

    def forward(self, features: torch.Tensor, stages: list[torch.Tensor]
                ) -> torch.Tensor | Mapping[str, object]:  # pragma: no cover
        raise NotImplementedError


def gradient_gate(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by `factor` (0 blocks it; paper 000, sec. 2.1).

    x̄ − |f|·(x̄ − x) (f > 0) or x̄ − |f|·(x − x̄) (f < 0), x̄ = stop_grad(x): the subtrahend is +0, so the value
    is x̄ bit for bit (−0 included) and d/dx = f exactly; a plain tensor expression, so torch.func
    (grad, jvp, vmap) sees through it.
    """
    if factor == 1.0:
        return x
    if factor == 0.0:
        return x.detach()
    frozen = x.detach()
    return frozen - abs(factor) * ((frozen - x) if factor > 0 else (x - frozen))


@HEADS.register("main")
class LinearHead(Head):
    """The plain linear classifier (torchvision's `fc`)."""

    def __init__(self, num_features: int, num_classes: int, **_: object) -> None:
        super().__init__()
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor, stages: list[torch.Tensor]) -> torch.Tensor:
        return self.fc(features)


@HEADS.register("fr")
class FeatureRefiner(Head):
    """Feature Refiner (paper 000, sec. 2.1): Linear(d→f)→LN→[Linear(f→f)→ReLU]×depth→Linear(f→f)→LN→Linear(f→C).

    Ablations of sec. 3.5 are options: `layernorm=False` drops both LayerNorms, `activation=False`
    drops the ReLUs, `depth=0` leaves Linear(d→f)→Linear(f→C) ("512x64 w/o activation").
    """

    gates_main = True
    stem_defaults = {"imagenet": {"dim": 256}}  # paper 000, appendix A: f = 256 for ImageNet-size inputs

    def __init__(self, num_features: int, num_classes: int, *, dim: int = 64, depth: int = 1,
                 layernorm: bool = True, activation: bool = True, **_: object) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(num_features, dim)]
        if layernorm:
            layers.append(nn.LayerNorm(dim))
        if depth > 0:
            for _i in range(depth):
                layers.append(nn.Linear(dim, dim))
                if activation:
                    layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Linear(dim, dim))
            if layernorm:
                layers.append(nn.LayerNorm(dim))
        layers.append(nn.Linear(dim, num_classes))
        self.refiner = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, stages: list[torch.Tensor]) -> torch.Tensor:
        return self.refiner(features)


def refiner_param_count(d: int, f: int, c: int) -> int:
    """FR overhead d·f + 2f² + 7f + (f+1)·C (paper 000, sec. 2.1 with LayerNorm affine)."""
    return d * f + 2 * f * f + 7 * f + (f + 1) * c
