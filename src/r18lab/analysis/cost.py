"""Model cost: parameters per part and FLOPs counted as multiply-accumulates of conv and linear layers."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def head_params(model: nn.Module) -> dict[str, int]:
    """Parameters of each head: `main` is `fc`, the others are `heads.<name>`; a peer group's peer i>0 as
    `peer{i}/<head>`."""
    if isinstance(getattr(model, "peers", None), nn.ModuleList):
        from ..models.classifier import peer_key
        return {peer_key(i, h): n for i, peer in enumerate(model.peers) for h, n in head_params(peer).items()}
    out = {}
    if getattr(model, "fc", None) is not None:
        out["main"] = count_params(model.fc)
    for name, head in getattr(model, "heads", {}).items():
        out[name] = count_params(head)
    return out


def layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    """MACs per image of one Conv2d (out·(in/groups)·k² per output position) or Linear (in·out) call."""
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return out.numel() // out.shape[0] * (module.in_channels // module.groups) * k
    return out.numel() // out.shape[0] * module.in_features


@torch.no_grad()
def trace_layers(model: nn.Module, input_shape: tuple[int, ...],
                 visit: Callable[[nn.Module, tuple, torch.Tensor], None]) -> None:
    """One eval-mode forward of a zero image, calling `visit(module, inputs, output)` for every Conv2d and Linear;
    the model's train/eval mode is restored."""
    handles = [m.register_forward_hook(visit) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of every Conv2d (out·(in/groups)·k²·H'·W') and Linear (in·out) in one forward of one image
    (the ResNet paper's "FLOPs" convention: ResNet-18 at 224² ≈ 1.8 G)."""
    total = 0

    def visit(m: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += layer_macs(m, out)

    trace_layers(model, input_shape, visit)
    return total
