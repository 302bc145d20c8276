"""Strength, correlation and the generalisation bound of an ensemble's members (Breiman 2001, sec. 2.3;
paper 004 sec. 4.1; spec 004 §A.10, §C). Pure functions over prediction arrays: votes (members × samples, class
indices) or probabilities (members × samples × classes), never a model."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

WEIGHTINGS = ("paper", "breiman")


def vote_shares(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """P(h(x) = j) = the share of members voting j, samples × classes (Breiman 2001, sec. 2.3)."""
    members, samples = votes.shape
    counts = np.zeros((samples, num_classes))
    np.add.at(counts, (np.broadcast_to(np.arange(samples), votes.shape), votes), 1.0)
    return counts / members


def runner_up(shares: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ĵ(x, y) = argmax_{j≠y} P(h(x) = j), the ensemble's strongest wrong class; ties → lowest index (spec 004 §A.10)."""
    masked = shares.astype(float).copy()
    masked[np.arange(len(labels)), labels] = -np.inf
    return masked.argmax(axis=1)  # numpy's argmax returns the first maximum


def margins(shares: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """mr(x, y) = P(h(x) = y) − max_{j≠y} P(h(x) = j) (Breiman 2001, sec. 2.3)."""
    rows = np.arange(len(labels))
    return shares[rows, labels] - shares[rows, runner_up(shares, labels)]


def raw_margins(votes: np.ndarray, labels: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """rmg(θ, x, y) = I(h_θ(x) = y) − I(h_θ(x) = ĵ(x, y)), members × samples (Breiman 2001, sec. 2.3)."""
    return (votes == labels[None]).astype(float) - (votes == wrong[None]).astype(float)


def soft_raw_margins(probs: np.ndarray, labels: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """Soft rmg(θ, x, y) = p_θ(y | x) − p_θ(ĵ | x), members × samples (the vote indicators replaced by probabilities)."""
    rows = np.arange(len(labels))
    return probs[:, rows, labels] - probs[:, rows, wrong]


def mean_correlation(rmg: np.ndarray, weighting: str = "paper") -> tuple[float, int, int]:
    """ρ̄ = mean Pearson ρ(rmg_i, rmg_j) over member pairs (paper 004 sec. 4.1), or Σρ_ij·sd_i·sd_j / Σsd_i·sd_j
    (`breiman`, Breiman 2001, sec. 2.3); pairs with a constant rmg are excluded. Returns (ρ̄, pairs used, excluded)."""
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"correlation weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    constant = np.all(rmg == rmg[:, :1], axis=1)
    centred = rmg - rmg.mean(axis=1, keepdims=True)
    sd = np.sqrt((centred ** 2).mean(axis=1))
    rho_sum = weight_sum = 0.0
    used = excluded = 0
    for i in range(len(rmg)):
        for j in range(i + 1, len(rmg)):
            if constant[i] or constant[j]:
                excluded += 1
                continue
            rho = float((centred[i] * centred[j]).mean() / (sd[i] * sd[j]))
            w = 1.0 if weighting == "paper" else float(sd[i] * sd[j])
            rho_sum, weight_sum, used = rho_sum + w * rho, weight_sum + w, used + 1
    return (rho_sum / weight_sum if used else float("nan")), used, excluded


def generalization_bound(strength: float, correlation: float) -> float:
    """PE* ≤ ρ̄(1 − s²)/s² for s > 0, else NaN; not clipped: ρ̄ < 0 gives a negative value (Breiman 2001, Thm 2.3)."""
    if not strength > 0 or np.isnan(correlation):
        return float("nan")
    return float(correlation * (1 - strength ** 2) / strength ** 2)


def _summary(mr: np.ndarray, rmg: np.ndarray, wrong: np.ndarray, weighting: str) -> dict:
    s = float(mr.mean())
    rho, used, excluded = mean_correlation(rmg, weighting)
    return {"strength": s, "correlation": rho, "bound": generalization_bound(s, rho), "excluded_pairs": excluded,
            "pairs": used, "members": int(rmg.shape[0]), "samples": int(rmg.shape[1]), "weighting": weighting,
            "margins": mr, "raw_margins": rmg, "runner_up": wrong,
            "member_strength": rmg.mean(axis=1)}


def strength_correlation(votes, labels, num_classes: int, weighting: str = "paper") -> dict:
    """Strength s = E mr, mean pairwise correlation ρ̄ of raw margins, bound ρ̄(1 − s²)/s² (Breiman 2001, sec. 2.3).

    Hard votes, as paper 004 sec. 4.1 and Breiman: each member's vote is its argmax.
    `votes`: int array members × samples (each member's predicted class), `labels`: int array of samples.
    Returns `strength`, `correlation`, `bound`, `excluded_pairs` (pairs with a constant raw margin, whose Pearson
    ρ is undefined), `pairs`, `members`, `samples`, `weighting`, and per sample `margins`, `runner_up`, per member
    `raw_margins` (members × samples) and `member_strength` (mean raw margin)."""
    votes, labels = _check_votes(votes, labels, num_classes)
    shares = vote_shares(votes, num_classes)
    wrong = runner_up(shares, labels)
    return _summary(margins(shares, labels), raw_margins(votes, labels, wrong), wrong, weighting)


def soft_strength_correlation(probs, labels, weighting: str = "paper") -> dict:
    """Soft variant: P(j|x) = mean member probability, mr = P(y|x) − max_{j≠y} P(j|x), rmg_θ = p_θ(y) − p_θ(ĵ).

    Same keys as `strength_correlation`; with one-hot probabilities it equals the vote version.
    `probs`: float array members × samples × classes (e.g. each head's softmax), `labels`: int array of samples."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 3:
        raise ConfigError(f"probabilities must be members × samples × classes, got shape {probs.shape}")
    labels = _check_labels(labels, probs.shape[1], probs.shape[2])
    shares = probs.mean(axis=0)
    wrong = runner_up(shares, labels)
    return _summary(margins(shares, labels), soft_raw_margins(probs, labels, wrong), wrong, weighting)


def _check_labels(labels, samples: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (samples,) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be {samples} integers, got shape {labels.shape} of {labels.dtype}")
    if samples == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes}) and be non-empty")
    return labels


def _check_votes(votes, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    votes = np.asarray(votes)
    if votes.ndim != 2 or not np.issubdtype(votes.dtype, np.integer):
        raise ConfigError(f"votes must be an integer array members × samples, got shape {votes.shape} of {votes.dtype}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be ≥ 2, got {num_classes}")
    labels = _check_labels(labels, votes.shape[1], num_classes)
    if votes.size and (votes.min() < 0 or votes.max() >= num_classes):
        raise ConfigError(f"votes must lie in [0, {num_classes})")
    return votes, labels
