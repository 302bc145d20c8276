"""A model's predictions on the candidates (and the labelled pool) → the AcquisitionInputs an acquisition reads.

`bald` draws MC-dropout passes at the one dropout site the paper's ResNets have room for: dropout on the pooled
features right before the linear head (Gal et al. 2017 apply it before the last layer); the passes reuse the
stored features, so each costs one small matmul, not a forward pass."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def softmax(z: np.ndarray) -> np.ndarray:
    """exp(z − max z) / Σ exp(z − max z) over the last axis."""
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def linear_head(weights: str, head: str) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a linear head in a weights file: `main` is `fc`, a named linear head `heads.<name>.fc`; one line
    when the head is not a single linear layer (no dropout site for BALD)."""
    from ..models.io import read_state_dict
    from pathlib import Path
    state, _ = read_state_dict(Path(weights))
    prefix = "fc." if head == "main" else f"heads.{head}.fc."
    if prefix + "weight" not in state:
        raise ConfigError(f"bald needs a linear head to put MC dropout before; {weights} has no linear head "
                          f"{head!r} (protocol.query_head)")
    w = state[prefix + "weight"].float().numpy()
    b = state[prefix + "bias"].float().numpy() if prefix + "bias" in state else np.zeros(w.shape[0], np.float32)
    return w, b


def mc_dropout_probs(features: np.ndarray, w: np.ndarray, b: np.ndarray, passes: int, rate: float,
                     seed: int) -> np.ndarray:
    """(T, N, C) softmax((m_t ⊙ f / (1 − p)) Wᵀ + b), m_t ~ Bernoulli(1 − p) per feature (inverted dropout)."""
    rng = np.random.default_rng(seed)
    out = np.empty((passes, len(features), w.shape[0]), dtype=np.float64)
    for t in range(passes):
        mask = rng.random(features.shape) >= rate
        out[t] = softmax((features * mask / (1.0 - rate)) @ w.T + b)
    return out


def inputs_for(acquisition: str, pred, n_candidates: int, *, head: str, weights: str, passes: int,
               dropout: float, seed: int):
    """AcquisitionInputs from `pred` (rows: the n candidates first, then — for coreset — the labelled pool)."""
    from .acquisition import ACQUISITIONS, AcquisitionInputs
    needs = set(getattr(ACQUISITIONS.get(acquisition), "needs", ()))
    n = n_candidates
    kw: dict = {"count": n}
    if "probs" in needs:
        if head not in pred.logits:
            raise ConfigError(f"protocol.query_head {head!r} is not a head of {weights}; it has "
                              f"{sorted(pred.logits)}")
        kw["probs"] = softmax(pred.logits[head][:n].astype(np.float64))
    if "features" in needs or "labelled_features" in needs:
        kw["features"], kw["labelled_features"] = pred.features[:n], pred.features[n:]
    if "mc_probs" in needs:
        w, b = linear_head(weights, head)
        kw["mc_probs"] = mc_dropout_probs(pred.features[:n].astype(np.float64), w, b, passes, dropout, seed)
    if "predicted_loss" in needs:
        loss = pred.aux.get("llal.loss")
        if loss is None:
            raise ConfigError(f"acquisition llal needs the llal head's predicted loss; {weights} has no llal head")
        kw["predicted_loss"] = loss[:n].reshape(-1)
    return AcquisitionInputs(**kw)
