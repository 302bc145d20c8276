"""Cross-entropy on one or more heads, or on a head's sub-heads (e.g. each Gramian head's own logits)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Batch, Objective, ObjectiveContext, resolve_heads


def ce_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """(1 − ε)·(−log p_y) + ε·mean_k(−log p_k), mean over the batch (label smoothing: Szegedy et al. 2016, sec. 7).
    With class weights w (torch's weighted cross-entropy): Σ_i w_{y_i}·ℓ_i / Σ_i w_{y_i}, where ℓ_i is the
    example's loss with each class k's log-probability weighted by w_k."""
    return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=label_smoothing)


def balanced_class_weights(counts: list[int]) -> list[float]:
    """w_c = n / (C · n_c) over the C classes with training images (n images in all; sklearn's
    `compute_class_weight("balanced")`): a class's images then weigh n/C in total, whatever its size. A class
    without training images never is a target; it gets 0."""
    present = [n for n in counts if n > 0]
    total, c = sum(present), len(present)
    return [total / (c * n) if n > 0 else 0.0 for n in counts]


def class_weight_tensor(spec, ctx: ObjectiveContext, heads: list[str], who: str) -> torch.Tensor | None:
    """The `class_weights` option as a float32 tensor on the run's device: None, `balanced` (from the training
    labels' class counts, `ctx.extras["class_counts"]`, set by the engine) or one weight ≥ 0 per class."""
    if spec is None:
        return None
    classes = {ctx.classes_of(h.split(".")[0]) for h in heads}
    if len(classes) > 1:
        raise ConfigError(f"{who}: class_weights needs heads with one label set, but they have {sorted(classes)} "
                          "classes; give the heads of another label set their own ce entry")
    (c,) = classes
    if spec == "balanced":
        counts = ctx.extras.get("class_counts")
        if counts is None:
            raise ConfigError(f"{who}: class_weights: balanced needs the training labels' class counts "
                              "(ObjectiveContext.extras['class_counts'], set by the training engine); give one "
                              "weight per class instead")
        if len(counts) != c:
            raise ConfigError(f"{who}: class_weights: balanced counts the run's {len(counts)} classes but the heads "
                              f"have {c}; give one weight per class instead")
        weights = balanced_class_weights(list(counts))
    elif isinstance(spec, (list, tuple)):
        ok = all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < float("inf") for w in spec)
        if len(spec) != c or not ok or not any(w > 0 for w in spec):
            raise ConfigError(f"{who}: class_weights must be `balanced` or {c} numbers ≥ 0 (one per class, not all "
                              f"0), got {spec!r}")
        weights = [float(w) for w in spec]
    else:
        raise ConfigError(f"{who}: class_weights must be `balanced` or a list of {c} weights, got {spec!r}")
    return torch.tensor(weights, dtype=torch.float32, device=ctx.device)


def bce_loss(logit: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """−[y·log σ(z) + (1 − y)·log(1 − σ(z))] of one logit z (N×1 or N) and y ∈ {0, 1}; mean over the batch
    (the linearised-networks code's `utils/loss.py`, spec 002d §1)."""
    return F.binary_cross_entropy_with_logits(logit.float().reshape(-1), y.float(), reduction=reduction)


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    """argmax_k z_k; for one logit, (sign(z) + 1) // 2, i.e. 1 iff z > 0 (spec 002d §1, `utils/metrics.py`)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def summed_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ over the batch of the CE (several logits) or the sigmoid BCE (one logit) — what evaluation reports."""
    if logits.shape[1] == 1:
        return bce_loss(logits, y, reduction="sum")
    return F.cross_entropy(logits.float(), y, reduction="sum")


def resolve_logit_keys(heads: str | list[str], ctx: ObjectiveContext, who: str) -> list[str]:
    """`"all"` → every top-level head (as `resolve_heads`); otherwise each name is a top-level head, a sub-head
    key `<head>.<sub>` (e.g. `ga.0`) or the shorthand `<head>.*` for all of a head's sub-heads, in the model's
    order; every key is checked against the model's logit keys (`ctx.logit_names`)."""
    if heads == "all" or not ctx.logit_names:
        return resolve_heads(heads, ctx.head_names, who)
    names = [heads] if isinstance(heads, str) else list(heads)
    available = list(ctx.logit_names)
    keys: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"{who}: heads must be names, got {name!r}")
        if name.endswith(".*"):
            subs = [k for k in available if k.startswith(name[:-1])]
            if not subs:
                with_subs = sorted({k.rsplit(".", 1)[0] for k in available if "." in k})
                raise ConfigError(f"{who}: {name!r} matches no sub-head; heads with sub-heads: "
                                  f"{', '.join(f'{h}.*' for h in with_subs) or 'none'} (model logits: {available})")
            expanded = subs
        elif name in available:
            expanded = [name]
        else:
            raise ConfigError(f"{who}: unknown head {name!r}; the model's logits are {available} "
                              "(a head, a sub-head like ga.0, or <head>.* for all its sub-heads)")
        keys += [k for k in expanded if k not in keys]
    return keys


@OBJECTIVES.register("ce")
class CrossEntropy(Objective):
    """Σ_h w·CE(logits_h, y) over the chosen heads (default: every head, as OJKD's CE(fr) + CE(main)).

    `heads` may name sub-heads: `heads: ga.*` (or `[ga.0, ga.1, ...]`) is Σ_k CE(z_k, y) over the Gramian
    heads' own logits, the reference's loss (paper 004 Eq. 3; spec 004 §B.5), whereas `heads: [ga]` is the CE of
    their combined logits. `label_smoothing` defaults to the run's `train.label_smoothing`; one term
    `ce/<key>` per head or sub-head. `class_weights`: `balanced` (w_c = n / (C·n_c) from the training pool) or
    one weight per class, as torch's weighted cross-entropy (`ce_loss`)."""

    def __init__(self, ctx: ObjectiveContext, heads: str | list[str] = "all", weight: float = 1.0,
                 label_smoothing: float | None = None, class_weights: str | list[float] | None = None) -> None:
        if ctx.num_classes == 1:
            raise ConfigError("objective ce on a one-logit model is 0 whatever the weights; use objective=[bce] "
                              "(sigmoid cross-entropy) or set model.num_classes to the number of classes")
        self.heads = resolve_logit_keys(heads, ctx, "objective ce")
        self.weight = float(weight)
        self.smoothing = float(ctx.label_smoothing if label_smoothing is None else label_smoothing)
        if not 0.0 <= self.smoothing <= 1.0:
            raise ConfigError(f"objective ce: label_smoothing must lie in [0, 1], got {self.smoothing}")
        self.class_weights = class_weight_tensor(class_weights, ctx, self.heads, "objective ce")

    def term_names(self) -> list[str]:
        return [f"ce/{h}" for h in self.heads]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        return {f"ce/{h}": self.weight * ce_loss(out.logits[h], batch.y, self.smoothing, self.class_weights)
                for h in self.heads}


@OBJECTIVES.register("bce")
class BinaryCrossEntropy(Objective):
    """Σ_h w·BCE(σ(z_h), y) on one-logit heads (`model.num_classes: 1`) of a two-class task, y ∈ {0, 1}: the
    sigmoid loss of the linearised-networks paper (spec 002d §1); one term `bce/<key>` per head."""

    def __init__(self, ctx: ObjectiveContext, heads: str | list[str] = "all", weight: float = 1.0) -> None:
        if ctx.num_classes != 1:
            raise ConfigError(f"objective bce needs a one-logit model, but the model has {ctx.num_classes} outputs; "
                              "set model.num_classes=1 (on a two-class task) or use objective=[ce]")
        self.heads = resolve_logit_keys(heads, ctx, "objective bce")
        self.weight = float(weight)

    def term_names(self) -> list[str]:
        return [f"bce/{h}" for h in self.heads]

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        return {f"bce/{h}": self.weight * bce_loss(out.logits[h], batch.y) for h in self.heads}
