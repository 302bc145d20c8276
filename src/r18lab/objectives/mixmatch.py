"""MixMatch (Berthelot et al. 2019, "MixMatch: a holistic approach to semi-supervised learning", Algorithm 1 and
eq. 2–5): term `mixmatch/x/<head>` (cross-entropy on the mixed labelled rows) and `mixmatch/u/<head>` (λ_u(t)·squared
error on the mixed unlabelled rows). Hyperparameters as the paper's CIFAR-10 setting and the reference reproduction
YU1ut/MixMatch-pytorch: K = 2, T = 0.5, α = 0.75, λ_u = 75 ramped up linearly.

Used as `objective=[mixmatch]` with `data.unlabelled=rest` and, as both the paper and the reference do, an EMA of
the weights for evaluation (`hooks=[ema]`). It composes the training batch itself (`compose`): label guessing
forwards each unlabelled view without gradient, then the labelled and unlabelled rows are mixed and forwarded once.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext, resolve_heads


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sharpen(p, T)_i = p_i^(1/T) / Σ_j p_j^(1/T), per row (MixMatch eq. 7)."""
    q = p.float().pow(1.0 / temperature)
    return q / q.sum(1, keepdim=True)


def guess_labels(view_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """q = Sharpen(mean_k softmax(z_k), T) over the K augmented views of each unlabelled image (MixMatch eq. 6–7)."""
    mean = torch.stack([F.softmax(z.float(), 1) for z in view_logits]).mean(0)
    return sharpen(mean, temperature)


def mix_weight(draw: float) -> float:
    """λ' = max(λ, 1 − λ) (MixMatch eq. 9): the mixed example stays closer to its own input."""
    return max(draw, 1.0 - draw)


def mixup(x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ'·x + (1 − λ')·x[perm], λ'·p + (1 − λ')·p[perm]) with λ' = `lam` (MixMatch eq. 8–11; the reference mixes the
    concatenated labelled and unlabelled rows with one shuffle of them all)."""
    return lam * x + (1.0 - lam) * x[perm], lam * targets + (1.0 - lam) * targets[perm]


def linear_rampup(progress: float, length: float) -> float:
    """clip(t / length, 0, 1): λ_u's linear ramp-up (YU1ut/MixMatch-pytorch `linear_rampup`; a length of 0: no ramp)."""
    return 1.0 if length <= 0 else float(np.clip(progress / length, 0.0, 1.0))


def labelled_loss(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """L_X = −mean_b Σ_c p_bc·log softmax(z_b)_c: cross-entropy against mixed soft labels (MixMatch eq. 3)."""
    return -(F.log_softmax(logits.float(), 1) * soft).sum(1).mean()


def unlabelled_loss(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """L_U = mean over rows and classes of (softmax(z) − q)²: the squared error divided by the L classes as in
    MixMatch eq. 4 (reference: `torch.mean((probs_u - targets_u) ** 2)`)."""
    return (F.softmax(logits.float(), 1) - soft).pow(2).mean()


@OBJECTIVES.register("mixmatch")
class MixMatch(Objective):
    """MixMatch on every head in `heads` (default all: with `model.heads=[main, fr]` each head gets both terms, the
    FR's gradient gate unchanged); label guessing from `guess_head` (default main).

    Per step: the labelled batch (B rows) and B unlabelled images in K = `views` augmentations; q = Sharpen(mean of
    the K softmaxes, T) computed without gradient with the network in training mode (as the reference); the B·(1+K)
    rows with targets [onehot(y); q; …; q] are mixed with one shuffle and λ' = max(λ, 1 − λ), λ ~ Beta(α, α), and
    forwarded as one batch (the reference forwards them in interleaved chunks so that every chunk's batch-norm
    statistics cover labelled and unlabelled rows; one forward of the whole batch is what that imitates). Loss
    L_X + λ_u(t)·L_U with λ_u(t) = `lambda_u`·clip(t / `rampup_epochs`, 0, 1), t the epochs done (fractional);
    `rampup_epochs` None = the whole run, as the reference (whose ramp length is its `--epochs`); the paper ramps over
    the first 16,000 steps. λ and the shuffle come from a generator seeded by (seed, step), so a resumed run mixes
    exactly as an uninterrupted one."""

    def __init__(self, ctx: ObjectiveContext, heads: str | list[str] = "all", guess_head: str = "main",
                 views: int = 2, temperature: float = 0.5, alpha: float = 0.75, lambda_u: float = 75.0,
                 rampup_epochs: float | None = None) -> None:
        self.heads = resolve_heads(heads, ctx.head_names, "objective mixmatch")
        if guess_head not in ctx.head_names:
            raise ConfigError(f"objective mixmatch: guess_head {guess_head!r} is not a head of the model "
                              f"{ctx.head_names}; set guess_head to the classifier that guesses labels (main)")
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"objective mixmatch: views (K, augmentations per unlabelled image) must be a whole "
                              f"number ≥ 1, got {views!r}; the paper uses 2")
        for name, value, low in (("temperature", temperature, 0.0), ("alpha", alpha, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise ConfigError(f"objective mixmatch: {name} must be a number > 0, got {value!r}")
        for name, value in (("lambda_u", lambda_u), ("rampup_epochs", rampup_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
                raise ConfigError(f"objective mixmatch: {name} must be a number ≥ 0, got {value!r}")
        if ctx.num_classes < 2:
            raise ConfigError("objective mixmatch needs a classifier of ≥ 2 classes; set model.num_classes to the "
                              "number of classes")
        self.guess_head, self.unlabelled_views = guess_head, int(views)
        self.temperature, self.alpha, self.lambda_u = float(temperature), float(alpha), float(lambda_u)
        epochs = ctx.extras.get("epochs")
        self.rampup = float(rampup_epochs if rampup_epochs is not None else epochs if epochs is not None else 0)
        self.num_classes, self.seed = ctx.num_classes, int(ctx.extras.get("seed", 0))

    def term_names(self) -> list[str]:
        return [f"mixmatch/{part}/{h}" for h in self.heads for part in ("x", "u")]

    def draw(self, step: int, rows: int) -> tuple[float, np.ndarray]:
        """λ' and the shuffle of `rows` rows for training step `step` (0-based), from a generator seeded by
        (seed, step): host-side numbers, so no device read."""
        rng = np.random.default_rng([self.seed, step, 0x4D4D])
        return mix_weight(float(rng.beta(self.alpha, self.alpha))), rng.permutation(rows)

    def compose(self, batch: Batch, unlabelled: list[torch.Tensor], forward: Callable, step: int) -> Batch:
        with torch.no_grad():
            guess = guess_labels([forward(u).logits[self.guess_head] for u in unlabelled], self.temperature)
        x = torch.cat([batch.x, *unlabelled])
        targets = torch.cat([F.one_hot(batch.y.long(), self.num_classes).float()] + [guess] * len(unlabelled))
        lam, perm = self.draw(step, len(x))
        mixed_x, mixed_t = mixup(x, targets, lam, torch.as_tensor(perm, device=x.device))
        return Batch(mixed_x.to(batch.x.dtype), batch.y, epoch=batch.epoch, progress=batch.progress,
                     soft=mixed_t, labelled=len(batch.x))

    def weight_u(self, progress: float | None) -> float:
        """λ_u(t) at `progress` epochs (None: the full weight)."""
        return self.lambda_u * (1.0 if progress is None else linear_rampup(progress, self.rampup))

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.soft is None or batch.labelled is None:
            raise ConfigError("objective mixmatch got a plain batch: it trains only on the batches it composes from "
                              "unlabelled data; set data.unlabelled=rest")
        b, w = batch.labelled, self.weight_u(batch.progress)
        terms: dict[str, torch.Tensor] = {}
        for h in self.heads:
            z = out.logits[h]
            terms[f"mixmatch/x/{h}"] = labelled_loss(z[:b], batch.soft[:b])
            terms[f"mixmatch/u/{h}"] = w * unlabelled_loss(z[b:], batch.soft[b:])
        return terms
