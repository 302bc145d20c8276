"""Optimizers with per-layer parameter groups and step-wise learning-rate schedules."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig, ScheduleConfig

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def layer_of_parameters(model: nn.Module) -> dict[str, str]:
    """Parameter name → owning Conv/Linear layer name; a norm layer follows the conv/linear before it."""
    owner: dict[str, str] = {}
    last_layer = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            last_layer = name
        elif not (isinstance(module, _NORMS) and last_layer is not None):
            continue
        for pname, _ in module.named_parameters(recurse=False):
            owner[f"{name}.{pname}" if name else pname] = last_layer
    return owner


def _is_head(name: str) -> bool:
    return name.startswith(("fc.", "heads.")) or ".fc." in name or ".heads." in name  # peers: peers.1.fc.weight


def lr_of_parameters(names: list[str], lr_groups: dict[str, float], base_lr: float) -> dict[str, float]:
    """Parameter name → its lr: the first `lr_groups` pattern that matches (a glob, or `heads` / `backbone`), else
    `base_lr`; a pattern that matches no parameter is one line naming it."""
    import fnmatch
    out: dict[str, float] = {}
    used = set()
    for n in names:
        for pattern, lr in lr_groups.items():
            hit = (_is_head(n) if pattern == "heads" else not _is_head(n) if pattern == "backbone"
                   else fnmatch.fnmatchcase(n, pattern))
            if hit:
                out[n] = float(lr)
                used.add(pattern)
                break
        else:
            out[n] = base_lr
    unused = [p for p in lr_groups if p not in used]
    if unused:
        from ..errors import ConfigError
        raise ConfigError(f"optim.lr_groups pattern {unused[0]!r} matches no trainable parameter (names look like "
                          f"{names[0] if names else 'conv1.weight'}, fc.weight, heads.NAME.fc.weight); use a glob such "
                          "as 'layer4.*', or heads / backbone")
    return out


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool,
                 lr_groups: dict[str, float] | None = None, base_lr: float = 1.0) -> list[dict]:
    """One group per Conv/Linear layer (with its norm) and lr, keyed `layer`, each with `lr_scale` 1.0 for hooks
    and `base_scale` = its lr / `base_lr` (from `lr_groups`; 1.0 without)."""
    owner = layer_of_parameters(model)
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lrs = lr_of_parameters([n for n, _ in named], lr_groups or {}, base_lr)
    groups: dict[tuple[str, bool, float], dict] = {}
    for name, p in named:
        no_decay = no_decay_norm_bias and (p.ndim <= 1 or id(p) in norm_params)
        key = (owner.get(name, ""), no_decay, lrs[name] / base_lr)
        g = groups.setdefault(key, {"params": [], "layer": key[0], "lr_scale": 1.0, "base_scale": key[2],
                                    "weight_decay": 0.0 if no_decay else weight_decay})
        g["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias, cfg.lr_groups, cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(cfg: ScheduleConfig, epoch_float: float, epochs: int) -> float:
    """Schedule multiplier at a fractional epoch: linear warm-up, then cosine / multistep / constant / linear decay
    to 0 (1 − s/S, the linearised-networks code's optax `linear_schedule`, spec 002d §1)."""
    if cfg.warmup_epochs > 0 and epoch_float < cfg.warmup_epochs:
        return (epoch_float + 1e-9) / cfg.warmup_epochs
    if cfg.name == "cosine":
        span = max(epochs - cfg.warmup_epochs, 1e-9)
        t = min(max(epoch_float - cfg.warmup_epochs, 0.0) / span, 1.0)
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.name == "linear":
        span = max(epochs - cfg.warmup_epochs, 1e-9)
        return max(1.0 - max(epoch_float - cfg.warmup_epochs, 0.0) / span, 0.0)
    if cfg.name == "multistep":
        return cfg.gamma ** sum(epoch_float >= m for m in cfg.milestones)
    return 1.0


def set_learning_rates(optimizer: torch.optim.Optimizer, base_lr: float, factor: float, min_lr: float = 0.0) -> float:
    """lr of each group = (min_lr + (base − min_lr)·factor) · its base_scale (optim.lr_groups) · its lr_scale (hooks);
    returns the global η_t."""
    eta = min_lr + (base_lr - min_lr) * factor
    for g in optimizer.param_groups:
        g["lr"] = eta * g.get("base_scale", 1.0) * g.get("lr_scale", 1.0)
    return eta
