"""Saliency scores of pruning at initialisation (spec 002a §1.2; higher = keep). Each score is a function
(model, weights, batches, context) → {name: score tensor}; the model is scored as it is (masked weights are zero).
The scoring follows Synaptic-Flow (`Pruners/pruners.py`), which the paper's predecessor code copies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

SCORES: Registry = Registry("pruning method")
Weights = dict[str, torch.Tensor]
Batches = list[tuple[torch.Tensor, torch.Tensor]]

INCLUDE = ("all", "no_first_last")


def prunable(model: nn.Module, include: str = "all") -> dict[str, nn.Parameter]:
    """The `weight` of every Conv2d and Linear (biases and BatchNorm never; spec §1.1), by parameter name in
    module order; `no_first_last` drops the first and the last of them."""
    if include not in INCLUDE:
        raise ConfigError(f"prune include must be one of {', '.join(INCLUDE)}, got {include!r}")
    found = {f"{n}.weight" if n else "weight": m.weight for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))}
    if include == "no_first_last":
        names = list(found)[1:-1]
        found = {n: found[n] for n in names}
    if not found:
        raise ConfigError("the model has no Conv2d or Linear weight to prune; check prune.include")
    return found


@dataclass
class ScoreContext:
    """What a score may use besides the weights: the logits key scored, the input shape (SynFlow), a generator
    (random), GraSP's temperature."""

    logits_key: str
    input_shape: tuple[int, ...]
    generator: torch.Generator
    temperature: float = 200.0


ScoreFn = Callable[[nn.Module, dict[str, nn.Parameter], Batches, ScoreContext], Weights]


def _logits(model: nn.Module, x: torch.Tensor, key: str) -> torch.Tensor:
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else {key: out}
    return logits[key].float()


def _normalised(scores: Weights, by: torch.Tensor) -> Weights:
    return {n: s / by for n, s in scores.items()}


def _total(scores: Weights) -> torch.Tensor:
    return torch.stack([s.sum() for s in scores.values()]).sum()


def batch_gradients(model: nn.Module, weights: dict[str, nn.Parameter], batches: Batches, key: str,
                    temperature: float = 1.0, create_graph: bool = False) -> Iterable[list[torch.Tensor]]:
    """∂CE(z/T, y)/∂θ per batch (mean CE over the batch), for the given weights in order."""
    params = list(weights.values())
    for x, y in batches:
        loss = F.cross_entropy(_logits(model, x, key) / temperature, y)
        yield list(torch.autograd.grad(loss, params, create_graph=create_graph))


@SCORES.register("random")
def random_scores(model, weights, batches, ctx: ScoreContext) -> Weights:
    """s ~ N(0, 1) i.i.d. (Synaptic-Flow `Rand`), from the run's generator."""
    return {n: torch.randn(w.shape, generator=ctx.generator).to(w.device) for n, w in weights.items()}


@SCORES.register("erk")
def erk_scores(model, weights, batches, ctx: ScoreContext) -> Weights:
    """Random scores: `erk` is a random mask inside Erdős–Rényi-Kernel layer densities (the hook sets scope erk)."""
    return random_scores(model, weights, batches, ctx)


@SCORES.register("magnitude")
def magnitude_scores(model, weights, batches, ctx: ScoreContext) -> Weights:
    """s = |θ| (Synaptic-Flow `Mag`)."""
    return {n: w.detach().abs() for n, w in weights.items()}


@SCORES.register("snip")
def snip_scores(model, weights, batches, ctx: ScoreContext) -> Weights:
    """s = |g ⊙ θ| / Σ|g ⊙ θ|, g = Σ_batches ∂CE/∂θ (Lee et al. 2019; Synaptic-Flow `SNIP`)."""
    grads = [torch.zeros_like(w) for w in weights.values()]
    for g_batch in batch_gradients(model, weights, batches, ctx.logits_key):
        for g, gb in zip(grads, g_batch):
            g.add_(gb)
    scores = {n: (g * w.detach()).abs() for (n, w), g in zip(weights.items(), grads)}
    return _normalised(scores, _total(scores))


@SCORES.register("iter_snip")
def iter_snip_scores(model, weights, batches, ctx: ScoreContext) -> Weights:
    """SNIP recomputed each round of the iterative schedule (predecessor `iterSNIP`)."""
    return snip_scores(model, weights, batches, ctx)


@SCORES.register("grasp")
def grasp_scores(model, weights, batches, ctx: ScoreContext) -> Weights:
    """s = θ ⊙ H g / (|Σ θ ⊙ H g| + 1e-10), g = Σ_b ∂CE(z/T)/∂θ held fixed, H g by double backward per batch,
    T = 200 (Wang et al. 2020; Synaptic-Flow `GraSP`). Keeping the largest s removes GraSP's largest −θ ⊙ Hg."""
    params = list(weights.values())
    g_stop = [torch.zeros_like(w) for w in params]
    for g_batch in batch_gradients(model, weights, batches, ctx.logits_key, ctx.temperature):
        for g, gb in zip(g_stop, g_batch):
            g.add_(gb)
    hg = [torch.zeros_like(w) for w in params]
    for g_batch in batch_gradients(model, weights, batches, ctx.logits_key, ctx.temperature, create_graph=True):
        z = torch.stack([(gs * gb).sum() for gs, gb in zip(g_stop, g_batch)]).sum()
        for acc, h in zip(hg, torch.autograd.grad(z, params)):
            acc.add_(h)
    scores = {n: w.detach() * h for (n, w), h in zip(weights.items(), hg)}
    return _normalised(scores, _total(scores).abs() + 1e-10)


@SCORES.register("synflow")
@torch.no_grad()
def synflow_scores(model, weights, batches, ctx: ScoreContext) -> Weights:
    """s = |∂R/∂θ ⊙ θ|, R = 1ᵀ f(𝟙; |θ|): every float state entry (weights, biases, BN γ, β, running statistics)
    made absolute, input one all-ones image, eval mode, no data; signs restored after (Tanaka et al. 2020;
    Synaptic-Flow `SynFlow`)."""
    state = [t for t in model.state_dict().values() if t.is_floating_point()]
    signs = [torch.sign(t) for t in state]
    for t in state:
        t.abs_()
    try:
        device = next(iter(weights.values())).device
        x = torch.ones((1, *ctx.input_shape), device=device)
        with torch.enable_grad():
            r = _logits(model, x, ctx.logits_key).sum()
            grads = torch.autograd.grad(r, list(weights.values()))
        return {n: (g * w).abs() for (n, w), g in zip(weights.items(), grads)}
    finally:
        for t, s in zip(state, signs):
            t.mul_(s)
