"""Model cost: parameters per part and FLOPs counted as multiply-accumulates of conv and linear layers."""
from __future__ import annotations

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


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of every Conv2d (out·(in/groups)·k²·H'·W') and Linear (in·out) in one forward of one image
    (the ResNet paper's "FLOPs" convention: ResNet-18 at 224² ≈ 1.8 G)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
