"""TempBalance (paper 002, second abstract; authors' tempbalance.py): layer-wise learning rates from
the heavy-tailed α of each layer's weight spectrum."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...registry import HOOKS
from ..optim import lr_factor
from . import Hook


def linear_lr_scales(alphas: torch.Tensor, low: float = 0.5, high: float = 1.5) -> torch.Tensor:
    """Map α linearly from [α_min, α_max] to [low, high] (TempBalance `tb_linear_map`; all equal → midpoint)."""
    a_min, a_max = alphas.min(), alphas.max()
    if float(a_max - a_min) == 0.0:
        return torch.full_like(alphas, (low + high) / 2)
    return low + (high - low) * (alphas - a_min) / (a_max - a_min)


def tuned_layers(model: nn.Module, num_evals: dict[str, int], min_evals: int = 50) -> list[str]:
    """Conv/Linear layers TempBalance tunes: all but the first and the last, and none with < min_evals eigenvalues."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    inner = layers[1:-1]
    return [n for n in inner if num_evals.get(n, 0) >= min_evals]


@HOOKS.register("tempbalance")
class TempBalance(Hook):
    """At fit start and after every epoch: α per tuned layer → lr_scale in [s1, s2]; untuned layers keep η_t."""

    def __init__(self, xmin: str = "median", s1: float = 0.5, s2: float = 1.5, min_evals: int = 50,
                 every: int = 1) -> None:
        from ...errors import ConfigError
        if not 0 < s1 <= s2:
            raise ConfigError(f"tempbalance needs 0 < s1 ≤ s2, got s1={s1}, s2={s2}")
        if xmin not in ("median", "ks"):
            raise ConfigError(f"tempbalance xmin must be median or ks, got {xmin!r}")
        self.xmin, self.s1, self.s2, self.min_evals, self.every = xmin, s1, s2, min_evals, every
        self.scales: dict[str, float] = {}
        self.alphas: dict[str, float] = {}

    @staticmethod
    def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Balanced separately: the model itself, or each peer of a peer group (prefix `peers.i.`)."""
        peers = getattr(model, "peers", None)
        return [(f"peers.{i}.", p) for i, p in enumerate(peers)] if peers is not None else [("", model)]

    def _update(self, ctx, next_epoch: int) -> dict[str, Any]:
        from ...analysis.spectrum import fit_power_law, layer_spectra
        self.alphas, self.scales = {}, {}
        for prefix, unit in self._units(ctx.model):
            spectra = layer_spectra(unit)
            names = tuned_layers(unit, {n: len(e) for n, e in spectra.items()}, self.min_evals)
            if not names:
                continue
            alphas = torch.tensor([fit_power_law(spectra[n], xmin=self.xmin).alpha for n in names],
                                  dtype=torch.float64)
            scales = linear_lr_scales(alphas, self.s1, self.s2)
            self.alphas.update({prefix + n: a for n, a in zip(names, alphas.tolist())})
            self.scales.update({prefix + n: s for n, s in zip(names, scales.tolist())})
        self.apply(ctx.optimizer)
        cfg = ctx.cfg
        eta = cfg.optim.lr * lr_factor(cfg.schedule, next_epoch, cfg.train.epochs)  # η_t of the coming epoch
        return {**{f"alpha/{n}": a for n, a in self.alphas.items()},
                **{f"lr_scale/{n}": s for n, s in self.scales.items()},
                **{f"lr/{n}": eta * s for n, s in self.scales.items()}}

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        for g in optimizer.param_groups:
            g["lr_scale"] = self.scales.get(g.get("layer", ""), 1.0)

    def on_fit_start(self, ctx) -> None:
        ctx.log({"epoch": 0, **self._update(ctx, 0)})

    def on_epoch_end(self, ctx, epoch: int, metrics: dict[str, Any]) -> None:
        if (epoch + 1) % self.every == 0:
            metrics.update(self._update(ctx, epoch + 1))

    def state_dict(self) -> dict[str, Any]:
        return {"scales": self.scales, "alphas": self.alphas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scales, self.alphas = dict(state.get("scales", {})), dict(state.get("alphas", {}))
