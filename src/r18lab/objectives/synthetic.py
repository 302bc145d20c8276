"""KL* (paper 002c §11.2; spec 002c §2 M14): KD's loss with synthetic soft labels in place of a teacher.

Targets p = softmax((onehot(y) + ε)/τ_s), ε ~ N(0, σ²) per class per sample, drawn fresh every step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext


def _scaled_noisy_onehot(y: torch.Tensor, num_classes: int, generator: torch.Generator | None, variance: float,
                         temperature: float) -> torch.Tensor:
    """(onehot(y) + ε)/τ_s, ε ~ N(0, variance) per class per sample from `generator` (on y's device)."""
    z = F.one_hot(y, num_classes).float()
    if variance > 0:
        z = z + math.sqrt(variance) * torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return z / temperature


def synthetic_log_targets(y: torch.Tensor, num_classes: int, generator: torch.Generator | None = None,
                          variance: float = 0.2, temperature: float = 0.15) -> torch.Tensor:
    """log p = log_softmax((onehot(y) + ε)/τ_s) (the stable form the loss uses; see `synthetic_targets`)."""
    return F.log_softmax(_scaled_noisy_onehot(y, num_classes, generator, variance, temperature), dim=1)


def synthetic_targets(y: torch.Tensor, num_classes: int, generator: torch.Generator | None = None,
                      variance: float = 0.2, temperature: float = 0.15) -> torch.Tensor:
    """p = softmax((onehot(y) + ε)/τ_s), ε ~ N(0, variance) (paper 002c §11.2: variance 0.2, τ_s = 0.15)."""
    return torch.softmax(_scaled_noisy_onehot(y, num_classes, generator, variance, temperature), dim=1)


def kl_to_log_probs(student_logits: torch.Tensor, log_p: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(p ‖ softmax(z_s/T)) = T²·Σ_k p_k·(log p_k − log q_k), mean over the batch (kd's `batchmean` form)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    return temperature ** 2 * (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def _positive(value: float, what: str, zero_ok: bool = False) -> float:
    v = float(value)
    if not (v >= 0 if zero_ok else v > 0) or not math.isfinite(v):
        raise ConfigError(f"objective kd_synthetic: {what} must be {'≥ 0' if zero_ok else '> 0'}, got {value!r}")
    return v


@OBJECTIVES.register("kd_synthetic")
class SyntheticKD(Objective):
    """KL*: term `kd_synthetic` = weight·τ²·KL(p ‖ softmax(z_s/τ)), p = softmax((onehot(y) + ε)/τ_s) (paper 002c §11.2).

    The paper's: the targets — noise variance 0.2 (`noise_variance`; σ = √0.2 per class per sample) and target
    temperature 0.15 (`target_temperature`). Ours: the student side — the KL is `kd`'s (`batchmean`, T² factor)
    with the student temperature τ = `temperature` (default 4, kd's default) applied to the student's logits as
    in KL; the paper does not say how the student side is tempered. `weight` is α (default 0.9, kd's).

    ε is drawn every step from a `torch.Generator` on the batch's device seeded with `seed` (no host sync). The
    run seed is not visible to objectives: give each seed's run its own `seed` for independent noise; a resumed
    run restarts the noise stream (the generator's state is not checkpointed)."""

    def __init__(self, ctx: ObjectiveContext, head: str = "main", temperature: float = 4.0, weight: float = 0.9,
                 noise_variance: float = 0.2, target_temperature: float = 0.15, seed: int = 0) -> None:
        if head not in ctx.head_names:
            raise ConfigError(f"objective kd_synthetic: unknown head {head!r}; the model has {ctx.head_names}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"objective kd_synthetic: seed must be an integer, got {seed!r}")
        self.head, self.num_classes, self.seed = head, ctx.num_classes, seed
        self.temperature = _positive(temperature, "temperature")
        self.target_temperature = _positive(target_temperature, "target_temperature")
        self.noise_variance = _positive(noise_variance, "noise_variance", zero_ok=True)
        self.weight = float(weight)
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """This objective's noise stream on `device`, seeded with `seed` when first used there."""
        device = torch.device(device)
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def log_targets(self, y: torch.Tensor) -> torch.Tensor:
        """log p for labels `y`, a fresh draw of ε (advances the generator)."""
        return synthetic_log_targets(y, self.num_classes, self.generator(y.device), self.noise_variance,
                                     self.target_temperature)

    def term_names(self) -> list[str]:
        return ["kd_synthetic"]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        z = out.logits[self.head]
        return {"kd_synthetic": self.weight * kl_to_log_probs(z, self.log_targets(batch.y), self.temperature)}
