"""From scores to masks (spec 002a §1.3): global or per-layer top-k with exactly ⌊d·N⌋ kept and ties broken by a
seeded order, layer densities from a rule (uniform, ERK), the iterative density schedule, the per-layer shuffle."""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError

Tensors = dict[str, torch.Tensor]
SCHEDULES = ("exponential", "linear")


def check_density(density: float) -> float:
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ConfigError(f"prune density must be in (0, 1] (the kept fraction; sparsity = 1 − density), "
                          f"got {density!r}")
    return float(density)


def round_densities(density: float, rounds: int, schedule: str = "exponential") -> list[float]:
    """d_r for r = 1..R: exponential d^{r/R} (Synaptic-Flow / predecessor `prune_loop`) or linear 1 − (1 − d)·r/R."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"prune schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if rounds < 1:
        raise ConfigError(f"prune rounds must be ≥ 1, got {rounds}")
    if schedule == "exponential":
        return [density ** (r / rounds) for r in range(1, rounds + 1)]
    return [1 - (1 - density) * r / rounds for r in range(1, rounds + 1)]


def _keep_top(scores: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask of the k largest entries of a flat tensor: everything above the k-th largest value, then the
    entries tied with it in a seeded random order until exactly k are kept (the repos' `score <= threshold` may
    keep fewer). O(N) by `kthvalue`, so SynFlow's 100 rounds on 11 M weights stay cheap."""
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    threshold = torch.kthvalue(scores.cpu() if scores.device.type == "mps" else scores, n - k + 1).values
    keep = scores > threshold
    tied = torch.nonzero(scores == threshold).flatten()
    need = k - int(keep.sum())  # one host read per round
    pick = torch.randperm(len(tied), generator=generator)[:need].to(tied.device)
    keep[tied[pick]] = True
    return keep


def global_mask(scores: Tensors, density: float, generator: torch.Generator,
                alive: Tensors | None = None) -> Tensors:
    """Keep the ⌊d·N⌋ highest scores over all layers together; entries not `alive` are never kept (masks only
    shrink across rounds)."""
    flat = torch.cat([_alive_scores(scores, alive, n).flatten() for n in scores])
    keep = _keep_top(flat, math.floor(density * flat.numel()), generator)
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = keep[i:i + s.numel()].view_as(s)
        i += s.numel()
    return out


def layer_mask(scores: Tensors, densities: dict[str, float], generator: torch.Generator,
               alive: Tensors | None = None) -> Tensors:
    """Keep ⌊d_l·N_l⌋ highest scores inside each layer l (Synaptic-Flow `_local_mask`, with rule densities)."""
    return {n: _keep_top(_alive_scores(scores, alive, n).flatten(), math.floor(densities[n] * s.numel()),
                         generator).view_as(s)
            for n, s in scores.items()}


def _alive_scores(scores: Tensors, alive: Tensors | None, name: str) -> torch.Tensor:
    s = scores[name].float()
    if alive is None:
        return s
    return torch.where(alive[name], s, torch.full_like(s, -math.inf))


def uniform_densities(shapes: dict[str, torch.Size], density: float) -> dict[str, float]:
    return {n: density for n in shapes}


def erk_densities(shapes: dict[str, torch.Size], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel: d_l = ε·(Σ dims)/(Π dims), ε solved so Σ d_l·N_l = d·N; layers that would exceed 1 are
    made dense and ε re-solved (Evci et al. 2020, RigL; the predecessor's `ERK.mask`)."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        free = sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        eps = budget / free if free > 0 else 0.0
        over = {n for n in shapes if n not in dense and eps * raw[n] > 1}
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= over


LAYER_DENSITIES = {"layer": uniform_densities, "erk": erk_densities}
SCOPES = ("global", *LAYER_DENSITIES)


def select(scores: Tensors, density: float, scope: str, generator: torch.Generator,
           alive: Tensors | None = None) -> Tensors:
    """The mask of one round: global top-k, or per-layer top-k at uniform (`layer`) or ERK densities."""
    if scope == "global":
        return global_mask(scores, density, generator, alive)
    if scope not in LAYER_DENSITIES:
        raise ConfigError(f"prune scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    densities = LAYER_DENSITIES[scope]({n: s.shape for n, s in scores.items()}, density)
    return layer_mask(scores, densities, generator, alive)


def bernoulli_mask(shapes: dict[str, torch.Size], densities: dict[str, float], generator: torch.Generator,
                   device: torch.device | str = "cpu") -> Tensors:
    """Each weight kept i.i.d. with probability d_l (the predecessor's ERK sampling; achieved density is random)."""
    return {n: (torch.rand(s, generator=generator) < densities[n]).to(device) for n, s in shapes.items()}


def shuffle_within_layers(masks: Tensors, generator: torch.Generator) -> Tensors:
    """Each layer's mask permuted at random: same layer densities, random positions (Frankle et al. 2021's check)."""
    return {n: m.flatten()[torch.randperm(m.numel(), generator=generator).to(m.device)].view_as(m)
            for n, m in masks.items()}
