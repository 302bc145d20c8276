"""One pruning: score, select, apply, R rounds (spec 002a §1.3) — shared by the `prune` hook and the benchmark."""
from __future__ import annotations

import torch
from torch import nn

from .scores import SCORES, Batches, ScoreContext
from .select import LAYER_DENSITIES, bernoulli_mask, select

DATA_FREE = ("random", "erk", "magnitude", "synflow")  # scores that read no images


def build_masks(model: nn.Module, weights: dict[str, nn.Parameter], method: str, densities: list[float],
                scope: str, batches: Batches, ctx: ScoreContext, erk_sampling: str = "exact",
                train_mode: bool = False) -> dict[str, torch.Tensor]:
    """Round r: score θ ⊙ m_{r−1}, keep the top ⌊d_r·N⌋ among the survivors (masks only shrink), zero the rest
    of θ in place; returns the last round's masks. The model is scored in eval mode unless `train_mode`."""
    score_fn = SCORES.get(method)
    shapes = {n: w.shape for n, w in weights.items()}
    device = next(iter(weights.values())).device
    was_training = model.training
    model.train(train_mode)
    alive = None
    try:
        for d in densities:
            scores = score_fn(model, weights, batches, ctx)
            if erk_sampling == "bernoulli":
                masks = bernoulli_mask(shapes, LAYER_DENSITIES[scope](shapes, d), ctx.generator, device)
            else:
                masks = select(scores, d, scope, ctx.generator, alive)
            alive = masks
            with torch.no_grad():
                torch._foreach_mul_(list(weights.values()), [masks[n] for n in weights])
    finally:
        model.train(was_training)
    return alive


def mask_distance(masks: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], min_kept: int = 1000) -> float:
    """Full-spectrum distance D(m) = Σ_l ‖(Δr_l, λ_l)‖₂ of the mask on θ ⊙ m, origin reference (spec §1.7)."""
    from ..analysis.masks import mask_topology, spectral_distance

    rows = mask_topology({n: m.cpu() for n, m in masks.items()},
                         {n: (weights[n] * masks[n]).cpu() for n in masks})
    return spectral_distance(rows, min_kept=min_kept)
