"""Pruning at initialisation on briefly pretrained weights (paper 002, first work, supplement §A.1; spec 002a):
train `pretrain_steps` dense steps, score, keep exactly ⌊d·N⌋ weights, keep the pruned ones at zero to the end."""
from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import torch

from ...errors import ConfigError
from ...data.loader import seeded_generator
from ...pruning.io import MASKS_FILE, MaskFile, load_masks, save_masks
from ...pruning.masks import DATA_FREE, build_masks, mask_distance
from ...pruning.scores import INCLUDE, SCORES, ScoreContext, prunable
from ...pruning.select import LAYER_DENSITIES, SCOPES, check_density, round_densities, shuffle_within_layers
from ...registry import HOOKS
from . import Hook

ITERATIVE = {"synflow": 100, "iter_snip": 100}
DETERMINISTIC = ("magnitude", "synflow")  # the same weights give the same mask: nothing to sample  # rounds by default (spec §1.3); every other method: 1
RESTARTS = ("pretrained", "init")
ERK_SAMPLING = ("exact", "bernoulli")


@HOOKS.register("prune")
class Prune(Hook):
    """Masks from a saliency score (`method`) at `density` (kept fraction), built after `pretrain_steps` optimizer
    steps of dense training (0 = at initialisation) and applied after every later step (gradients masked too, so
    clipping and momentum see the sparse network). Training continues from θ_N ⊙ m (`restart_from: pretrained`) or
    θ0 ⊙ m (`init`, all weights and BN statistics rewound); the optimizer's momentum is discarded at pruning.
    `method: erk` = random scores inside ERK layer densities; `scope: erk|layer` puts any score inside those
    densities. `mask_file` applies a saved mask instead of scoring. `population` P > 1 is the abstract's search
    (PAGS, as the third-party code reads it; spec §1.7): P masks from P draws of the scoring images (or of the
    random scores), the one with the largest full-spectrum distance D (origin reference, layers with more than
    `distance_min_kept` kept weights) is kept. Masks are saved to masks.safetensors. Scoring runs in eval mode as the
    repos do (`train_mode: false`); at θ0 that means BN with running statistics 0/1, which cost GraSP 18 points at
    tiny scale against `train_mode: true` (README)."""

    def __init__(self, method: str = "snip", density: float = 0.1, scope: str | None = None,
                 rounds: int | None = None, schedule: str = "exponential", pretrain_steps: int = 0,
                 restart_from: str = "pretrained", samples_per_class: int = 10, include: str = "all",
                 batch_size: int = 256, temperature: float = 200.0, train_mode: bool = False,
                 erk_sampling: str = "exact", shuffle: bool = False, head: str | None = None,
                 mask_file: str | None = None, population: int = 1, distance_min_kept: int = 1000) -> None:
        SCORES.get(method)  # an unknown method: one line naming the valid ones
        self.method, self.density = method, check_density(density)
        if method == "erk" and scope not in (None, "erk"):
            raise ConfigError(f"prune method erk sets the layer densities itself; drop scope {scope!r} "
                              "(or use another method with scope: erk)")
        self.scope = scope or ("erk" if method == "erk" else "global")
        if self.scope not in SCOPES:
            raise ConfigError(f"prune scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        self.rounds = ITERATIVE.get(method, 1) if rounds is None else int(rounds)
        self.densities = round_densities(self.density, self.rounds, schedule)
        self.schedule = schedule
        if not (isinstance(pretrain_steps, int) and pretrain_steps >= 0):
            raise ConfigError(f"prune pretrain_steps must be a whole number ≥ 0, got {pretrain_steps!r}")
        for key, value, allowed in (("restart_from", restart_from, RESTARTS), ("include", include, INCLUDE),
                                    ("erk_sampling", erk_sampling, ERK_SAMPLING)):
            if value not in allowed:
                raise ConfigError(f"prune {key} must be one of {', '.join(allowed)}, got {value!r}")
        if erk_sampling == "bernoulli" and self.scope not in LAYER_DENSITIES:
            raise ConfigError("prune erk_sampling: bernoulli needs scope erk or layer (it samples per-layer densities)")
        if samples_per_class < 1 or batch_size < 1 or temperature <= 0:
            raise ConfigError("prune samples_per_class and batch_size must be ≥ 1 and temperature > 0")
        self.pretrain_steps, self.restart_from, self.include = pretrain_steps, restart_from, include
        self.samples_per_class, self.batch_size, self.temperature = samples_per_class, batch_size, temperature
        self.train_mode, self.erk_sampling, self.shuffle = train_mode, erk_sampling, shuffle
        self.head, self.mask_file = head, mask_file
        if not (isinstance(population, int) and population >= 1):
            raise ConfigError(f"prune population must be a whole number ≥ 1, got {population!r}")
        if population > 1 and method in DETERMINISTIC:
            raise ConfigError(f"prune population {population} samples masks, but {method} gives the same mask every "
                              "time; use snip, grasp, iter_snip (scoring images re-drawn), random or erk")
        self.population, self.distance_min_kept = population, distance_min_kept
        self.population_distances: list[float] = []
        self.masks: dict[str, torch.Tensor] = {}
        self.init_state: dict[str, torch.Tensor] = {}  # the whole model at θ0, kept only for restart_from: init
        self.init_weights: dict[str, torch.Tensor] = {}  # prunable weights at θ0, for the mask file
        self._weights: dict[str, torch.nn.Parameter] | None = None
        self.pruned = False

    # -- events -----------------------------------------------------------------------------------
    def on_fit_start(self, ctx) -> None:
        t = ctx.cfg.train
        total = t.epochs * len(ctx.loader)
        total = total if t.max_steps is None else min(total, t.max_steps)
        if self.pretrain_steps >= total:
            raise ConfigError(f"prune pretrain_steps={self.pretrain_steps} is not shorter than the run's {total} "
                              "steps; lower pretrain_steps or train longer")
        names = list(getattr(ctx.model, "logit_names", ctx.model.head_names))
        if self.head is not None and self.head not in names:
            raise ConfigError(f"prune head {self.head!r} is not an output of this model; choose one of "
                              f"{', '.join(names)}")
        weights = prunable(ctx.model, self.include)
        self.init_weights = {n: w.detach().clone() for n, w in weights.items()}
        if self.mask_file is not None:
            self._check_file(load_masks(self.mask_file), weights)  # a bad file fails before any training
        if self.pretrain_steps == 0:
            self._prune(ctx, 0)
        elif self.restart_from == "init":
            self.init_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}

    def before_step(self, ctx, step: int) -> None:
        if self.pruned:
            with_grad = [(p.grad, self.masks[n]) for n, p in self._bound(ctx).items() if p.grad is not None]
            if with_grad:
                torch._foreach_mul_([g for g, _ in with_grad], [m for _, m in with_grad])

    def after_step(self, ctx, step: int) -> None:
        if self.pruned:
            self._apply(self._bound(ctx))
        elif step == self.pretrain_steps:
            self._prune(ctx, step)

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "masks": {n: m.to(torch.uint8) for n, m in self.masks.items()},
                "init_state": self.init_state,
                "init_weights": {} if self.pruned else self.init_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruned = bool(state.get("pruned", False))
        self.masks = {n: m.bool() for n, m in state.get("masks", {}).items()}
        self.init_state = dict(state.get("init_state", {}))
        if state.get("init_weights"):
            self.init_weights = dict(state["init_weights"])
        self._weights = None  # re-bound to the restored model at the next step

    # -- pruning ----------------------------------------------------------------------------------
    def _bound(self, ctx) -> dict[str, torch.nn.Parameter]:
        """The model's prunable weights, looked up once (after a resume the masks come from the checkpoint)."""
        if getattr(self, "_weights", None) is None:
            self._weights = prunable(ctx.model, self.include)
            self.masks = {n: m.to(self._weights[n].device) for n, m in self.masks.items()}
        return self._weights

    def _apply(self, weights: dict[str, torch.nn.Parameter]) -> None:
        with torch.no_grad():
            torch._foreach_mul_(list(weights.values()), [self.masks[n] for n in weights])

    def _scoring_batches(self, ctx, draw: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`samples_per_class` training images of every class (seeded by the run's seed and the draw), normalised,
        unaugmented."""
        images, labels = ctx.loader.images, ctx.loader.labels
        gen = torch.Generator().manual_seed(ctx.cfg.seed) if draw == 0 else seeded_generator(ctx.cfg.seed, draw)
        order = torch.randperm(len(labels), generator=gen).to(labels.device)
        picked = torch.cat([order[labels[order] == c][:self.samples_per_class] for c in labels.unique()])
        x, y = images[picked], labels[picked]
        return [(ctx.normalizer(x[i:i + self.batch_size]), y[i:i + self.batch_size])
                for i in range(0, len(y), self.batch_size)]

    def _score_masks(self, ctx, weights: dict[str, torch.nn.Parameter],
                     dense: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One mask, or the population's mask of largest D (candidates restart from `dense`, the weights before
        scoring); the weights end as θ ⊙ m of the returned mask."""
        model = ctx.model
        gen = torch.Generator().manual_seed(ctx.cfg.seed + 7919)
        key = self.head or list(getattr(model, "logit_names", model.head_names))[0]
        sctx = ScoreContext(key, tuple(ctx.x_test.shape[1:]), gen, self.temperature)
        best, best_distance = None, -math.inf
        for draw in range(self.population):
            if draw:
                with torch.no_grad():
                    torch._foreach_copy_(list(weights.values()), list(dense.values()))
            batches = [] if self.method in DATA_FREE else self._scoring_batches(ctx, draw)
            masks = build_masks(model, weights, self.method, self.densities, self.scope, batches, sctx,
                                self.erk_sampling, self.train_mode)
            masks = shuffle_within_layers(masks, gen) if self.shuffle else masks
            if self.population == 1:
                return masks
            distance = mask_distance(masks, dense, self.distance_min_kept)
            self.population_distances.append(distance)
            if distance > best_distance:
                best, best_distance = masks, distance
        with torch.no_grad():
            torch._foreach_copy_(list(weights.values()), list(dense.values()))
        return best

    def _check_file(self, file: MaskFile, weights: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        missing = [n for n in weights if n not in file.masks]
        wrong = [f"{n} {tuple(file.masks[n].shape)} vs the model's {tuple(w.shape)}"
                 for n, w in weights.items() if n in file.masks and file.masks[n].shape != w.shape]
        if missing or wrong:
            what = f"has no mask for {missing[0]}" if missing else f"has a mask of another shape: {wrong[0]}"
            raise ConfigError(f"mask file {self.mask_file} does not fit this model: it {what} "
                              f"({len(missing) + len(wrong)} layers differ); use a mask made for this model and "
                              "prune.include")
        return {n: file.masks[n].to(w.device) for n, w in weights.items()}

    def _prune(self, ctx, step: int) -> None:
        tic = time.perf_counter()
        weights = prunable(ctx.model, self.include)
        dense = {n: w.detach().clone() for n, w in weights.items()}
        masks = (self._check_file(load_masks(self.mask_file), weights) if self.mask_file is not None
                 else self._score_masks(ctx, weights, dense))
        if self.restart_from == "init" and self.init_state:
            ctx.model.load_state_dict(self.init_state)
        self.masks = {n: masks[n].bool() for n in weights}
        self._weights = weights
        self._apply(weights)
        ctx.optimizer.state = defaultdict(dict)  # momentum of the dense steps discarded (spec §1.4)
        self.pruned, self.init_state = True, {}
        seconds = time.perf_counter() - tic
        kept = {n: int(m.sum()) for n, m in self.masks.items()}  # one host read, once per run
        total = sum(m.numel() for m in self.masks.values())
        density = sum(kept.values()) / total
        meta = {"method": self.method, "density_target": self.density, "density": density, "scope": self.scope,
                "rounds": self.rounds, "schedule": self.schedule, "pretrain_steps": self.pretrain_steps,
                "prune_step": step, "restart_from": self.restart_from, "include": self.include,
                "samples_per_class": self.samples_per_class, "shuffle": self.shuffle,
                "mask_file": self.mask_file, "seed": ctx.cfg.seed, "population": self.population,
                "population_distance": self.population_distances,
                "layer_density": {n: kept[n] / self.masks[n].numel() for n in self.masks}}
        save_masks(ctx.out / MASKS_FILE, MaskFile(self.masks, dense, self.init_weights, meta))
        ctx.log({"epoch": getattr(ctx, "epoch", 0), "step": step, "prune/density": density,
                 "prune/sparsity": 1 - density, "prune/kept": sum(kept.values()), "prune/prunable": total,
                 "prune/empty_layers": sum(1 for v in kept.values() if v == 0), "prune/seconds": seconds})
