"""Grad-CAM (Selvaraju et al. 2017, eq. 1–2) and the teacher–student localisation agreement built on it (spec 002c
§2 M1, K1; paper 002c §4.1, Fig. 2).

Our own short implementation rather than captum (not a dependency): one forward hook on the chosen module of
`net.model` swaps its output A for a detached leaf that requires grad, and `torch.autograd.grad` takes ∂y_c/∂A —
no extra install, runs on CPU or CUDA, and never touches the parameters' `.grad` nor their `requires_grad`.
Assumption (spec 002c §6.2): the maps are upsampled bilinearly (align_corners=False) to the input size before any
comparison; the default layer is the last residual stage, `layer4`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .nets import Net, eval_mode


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The sub-module named `layer` (a dotted name, e.g. `layer4` or `layer4.1`); ConfigError listing the choices."""
    modules = dict(model.named_modules())
    if layer and layer in modules:
        return modules[layer]
    top = [n for n, _ in model.named_children()]
    blocks = [n for n in modules if n.count(".") == 1 and n.split(".")[0].startswith("layer")]
    raise ConfigError(f"unknown Grad-CAM layer {layer!r}; the model's top-level modules are {', '.join(top)}"
                      + (f" and its stage blocks {', '.join(blocks)}" if blocks else ""))


def _targets(target_class: int | torch.Tensor, n: int) -> torch.Tensor:
    """One class index per image (an int is broadcast), int64 on the CPU."""
    t = torch.as_tensor(target_class, dtype=torch.long).reshape(-1).cpu()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ConfigError(f"target_class has {t.numel()} entries for {n} images; give one per image or one int")
    return t


def gradcam(net: Net, x01: torch.Tensor, target_class: int | torch.Tensor, layer: str = "layer4",
            batch_size: int = 64) -> torch.Tensor:
    """CAM_c = ReLU(Σ_k α_k A^k), α_k = mean_ij ∂y_c/∂A^k_ij, y_c = pre-softmax logit of `net.head`, upsampled
    bilinearly (align_corners=False, spec 002c §6.2) to the input H×W (Selvaraju et al. 2017, eq. 1–2); N×H×W on CPU."""
    if x01.ndim != 4:
        raise ConfigError(f"gradcam expects N×C×H×W images in [0, 1], got shape {tuple(x01.shape)}")
    module = find_layer(net.model, layer)
    targets = _targets(target_class, len(x01))
    captured: list[torch.Tensor] = []

    def swap(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ConfigError(f"Grad-CAM layer {layer!r} must output an N×K×h×w tensor, got {type(output).__name__}")
        leaf = output.detach().requires_grad_(True)  # the graph starts here: only ∂y_c/∂A is ever computed
        captured.append(leaf)
        return leaf

    maps = []
    handle = module.register_forward_hook(swap)
    try:
        with eval_mode(net.model), torch.enable_grad():
            for i in range(0, len(x01), batch_size):
                captured.clear()
                x = x01[i:i + batch_size]
                logits = net.logits(x)
                t = targets[i:i + batch_size].to(logits.device)
                y_c = logits.gather(1, t[:, None]).sum()  # images are independent in eval mode: Σ gives each ∂y_c/∂A
                if len(captured) != 1:
                    raise ConfigError(f"Grad-CAM layer {layer!r} ran {len(captured)} times in one forward pass; "
                                      "choose a module that runs once")
                (activations,) = captured
                (grads,) = torch.autograd.grad(y_c, activations)
                alpha = grads.mean(dim=(2, 3), keepdim=True)
                cam = F.relu((alpha * activations.detach()).sum(1, keepdim=True))
                cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
                maps.append(cam[:, 0].float().cpu())
    finally:
        handle.remove()
    if not maps:
        return torch.zeros(0, *x01.shape[-2:])
    return torch.cat(maps)


def map_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_n, b_n) = ⟨a_n, b_n⟩ / (‖a_n‖‖b_n‖) per image on the flattened maps; 0 where either map is all zero."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    dots = (a * b).sum(1)
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(dots))


def cam_agreement(cam_teacher: torch.Tensor, cam_a: torch.Tensor, cam_b: torch.Tensor) -> dict:
    """M1: % of images with cos(CAM_T, CAM_a) > cos(CAM_T, CAM_b), a tie counting ½ (paper 002c §4.1; spec 002c §2 M1).

    Returns `percent`, the per-image `indicator` (1, ½ or 0; its mean × 100 is `percent`, for bootstrapping), the two
    cosine vectors `cos_a`, `cos_b` and `n`. A cosine with an all-zero map is 0, so two dead maps tie (½)."""
    if not (cam_teacher.shape == cam_a.shape == cam_b.shape) or cam_teacher.ndim < 2:
        raise ConfigError(f"cam_agreement needs three N×H×W maps of one shape, got {tuple(cam_teacher.shape)}, "
                          f"{tuple(cam_a.shape)}, {tuple(cam_b.shape)}")
    cos_a, cos_b = map_cosine(cam_teacher, cam_a), map_cosine(cam_teacher, cam_b)
    indicator = (cos_a > cos_b).double() + 0.5 * (cos_a == cos_b).double()
    n = len(indicator)
    percent = float(indicator.mean() * 100) if n else float("nan")
    return {"percent": percent, "indicator": indicator, "cos_a": cos_a, "cos_b": cos_b, "n": n}
