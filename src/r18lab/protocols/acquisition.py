"""Acquisition functions for active learning: pure functions over prediction arrays, in one registry (issue 12).

Two layers:

- Pure functions over numpy arrays, each returning the k chosen candidate indices (int64, best first):
  `random(n, k, seed)`, `entropy(probs, k)`, `margin(probs, k)`, `bald(mc_probs, k)`,
  `coreset(labelled_features, candidate_features, k)`, `llal(predicted_losses, k)`; their per-candidate scores
  come from `entropy_scores`, `margin_scores`, `bald_scores`, `k_center_greedy`.
- `ACQUISITIONS`, a Registry whose entries share one signature, `fn(inputs: AcquisitionInputs, k, seed) ->
  Selection`: `inputs` holds whatever the model said about the candidates (each entry declares the fields it
  `needs`), `Selection` holds the chosen indices with the scores, so a protocol can save both for audit.
  `acquire(name, inputs, k, seed)` looks the name up, checks the inputs and the budget, and runs it.

Order: ranked scores pick the k best, ties broken by the lowest candidate index (a stable sort); the result is a
function of the arrays (and, for `random`, of the seed) only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..registry import Registry

ACQUISITIONS: Registry = Registry("acquisition")

#: squared-distance elements computed at once by the coreset's initial pass (candidates × a chunk of the pool)
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class AcquisitionInputs:
    """What a model said about N candidates (numpy arrays; an entry reads only the fields it `needs`).

    probs (N, C) softmax of the queried head; mc_probs (T, N, C) softmax of T MC-dropout passes; features (N, D)
    penultimate features of the candidates and labelled_features (L, D) those of the labelled pool;
    predicted_loss (N,) the llal head's output."""

    probs: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    features: np.ndarray | None = None
    labelled_features: np.ndarray | None = None
    predicted_loss: np.ndarray | None = None
    count: int | None = None  # N, for `random` when no array is given

    def candidates(self) -> int:
        """N: the number of candidates, from the first array given (or `count`)."""
        for name, axis in (("probs", 0), ("mc_probs", 1), ("features", 0), ("predicted_loss", 0)):
            a = getattr(self, name)
            if a is not None:
                return int(np.shape(a)[axis])
        if self.count is None:
            raise ConfigError("acquisition inputs hold no candidate array; give probs, mc_probs, features, "
                              "predicted_loss or count")
        return int(self.count)


@dataclass(frozen=True)
class Selection:
    """The k chosen candidate indices (best first) and the evidence: `scores` (N,) per candidate, named
    `score_name` (`largest_first` says which end is picked), and `pick_scores` (k,) each pick's score when it was
    picked (= scores[indices] except for coreset, whose distances shrink as centres are added)."""

    indices: np.ndarray
    scores: np.ndarray
    pick_scores: np.ndarray
    score_name: str
    largest_first: bool = True


# -- checks and ranking -------------------------------------------------------------------------------------
def check_budget(k: object, n: int) -> int:
    """k as an int in 0..n, else one line."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ConfigError(f"acquisition budget must be a whole number ≥ 0, got {k!r}")
    if k > n:
        raise ConfigError(f"acquisition budget k={k} exceeds the {n} candidates; lower the budget or draw more "
                          "candidates from the unlabelled pool")
    return int(k)


def _array(a: object, ndim: int, what: str, shape: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != ndim:
        raise ConfigError(f"acquisition {what} must be a {shape} array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"acquisition {what} contain NaN or inf; check the model's outputs")
    return arr


def ranked(scores: np.ndarray, k: int, largest: bool = True) -> np.ndarray:
    """The k best candidates by `scores` (largest or smallest first), ties to the lowest index (stable sort)."""
    k = check_budget(k, len(scores))
    order = np.argsort(-scores if largest else scores, kind="stable")
    return order[:k].astype(np.int64)


# -- scores -------------------------------------------------------------------------------------------------
def _entropy(p: np.ndarray) -> np.ndarray:
    """H[p] = −Σ_c p_c log p_c over the last axis, 0·log 0 = 0 (nats)."""
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """H[p] = −Σ_c p_c log p_c per candidate, nats (Shannon 1948; max-entropy sampling, paper 000 sec. 3.2)."""
    return _entropy(_array(probs, 2, "probs", "N×C"))


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """p_(1) − p_(2), the top-1 minus the top-2 probability per candidate (Scheffer et al. 2001; smallest first)."""
    p = _array(probs, 2, "probs", "N×C")
    if p.shape[1] < 2:
        raise ConfigError(f"acquisition margin needs at least 2 classes, got probs of shape {p.shape}")
    top = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def bald_scores(mc_probs: np.ndarray) -> np.ndarray:
    """I[y; θ] = H[mean_t p_t] − mean_t H[p_t] over T MC-dropout passes, nats (Houlsby et al. 2011; Gal et al. 2017)."""
    p = _array(mc_probs, 3, "mc_probs", "T×N×C")
    if p.shape[0] < 1:
        raise ConfigError("acquisition bald needs at least one MC-dropout pass, got 0")
    return _entropy(p.mean(0)) - _entropy(p).mean(0)


def _squared_distances(x: np.ndarray, x_sq: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """‖x_i − c_j‖² = ‖x_i‖² − 2x_i·c_j + ‖c_j‖² for rows x (n×D) and centres (m×D): an n×m matrix."""
    d = x @ centres.T
    d *= -2
    d += x_sq[:, None]
    d += np.einsum("ij,ij->i", centres, centres)[None, :]
    return d


def k_center_greedy(labelled_features: np.ndarray, candidate_features: np.ndarray, k: int,
                    chunk_elements: int = CHUNK_ELEMENTS, block: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy k-center (Sener & Savarese 2018, Alg. 1): pick argmax_i min_c ‖x_i − c‖₂, add it to the centres c.

    Centres start as the whole labelled pool; the min distances are one vector, its start computed in chunks of
    ≤ `chunk_elements` candidate×centre entries (never the whole matrix), then lowered with the picks' distances.
    Ties: lowest index; a pick is never picked again. Arithmetic in the inputs' float type (float32 at least),
    ‖x‖² − 2x·c + ‖c‖². Returns (indices (k,), each pick's distance when picked (k,), each candidate's distance
    to the labelled pool (N,), inf with an empty pool).

    The update is lazy but exact: distances only shrink, so the stale vector bounds the true one from above. A
    pick refreshes only the few candidates with the largest bounds against the picks not yet applied and takes
    the best of them when it beats every other bound strictly; otherwise, and every `block` picks, the pending
    picks are applied to all candidates at once (one N×block product instead of `block` memory-bound passes)."""
    dtype = np.result_type(np.asarray(labelled_features).dtype, np.asarray(candidate_features).dtype, np.float32)
    x = np.ascontiguousarray(candidate_features, dtype=dtype)
    pool = np.ascontiguousarray(labelled_features, dtype=dtype)
    if x.ndim != 2 or pool.ndim != 2 or (len(pool) and pool.shape[1] != x.shape[1]):
        raise ConfigError(f"coreset needs candidate features N×D and labelled features L×D, got {x.shape} and "
                          f"{pool.shape}")
    if not (np.isfinite(x).all() and np.isfinite(pool).all()):
        raise ConfigError("coreset features contain NaN or inf; check the model's features")
    n = len(x)
    k = check_budget(k, n)
    x_sq = np.einsum("ij,ij->i", x, x)
    nearest = np.full(n, np.inf, dtype=dtype)  # squared distance to the nearest applied centre (an upper bound)
    rows = max(1, int(chunk_elements) // max(n, 1))
    for start in range(0, len(pool), rows):
        np.minimum(nearest, _squared_distances(x, x_sq, pool[start:start + rows]).min(1), out=nearest)
    np.maximum(nearest, 0, out=nearest)
    pool_distance = np.sqrt(nearest).astype(np.float64)
    picks = np.empty(k, dtype=np.int64)
    picked_at = np.empty(k, dtype=np.float64)
    pending: list[int] = []  # picks not yet applied to every candidate
    for j in range(k):
        p = _lazy_argmax(x, x_sq, nearest, pending) if pending else None
        if p is None:  # apply the pending picks everywhere: `nearest` is then exact
            if pending:
                np.minimum(nearest, _squared_distances(x, x_sq, x[pending]).min(1), out=nearest)
                pending.clear()
            p = int(np.argmax(nearest))  # the first maximum: ties go to the lowest index
        picks[j], picked_at[j] = p, np.sqrt(max(float(nearest[p]), 0.0))
        nearest[p] = -np.inf  # chosen: never again
        pending.append(p)
        if len(pending) >= block:
            np.minimum(nearest, _squared_distances(x, x_sq, x[pending]).min(1), out=nearest)
            pending.clear()
    return picks, picked_at, pool_distance


def _lazy_argmax(x: np.ndarray, x_sq: np.ndarray, nearest: np.ndarray, pending: list[int],
                 window: int = 16, widest: int = 1024) -> int | None:
    """The exact argmax of the true min distances, refreshing (in place) only the `window` largest bounds against
    the pending picks, widening ×4 up to `widest`; None when no refreshed value beats the remaining bounds strictly."""
    n, m = len(nearest), window
    centres = x[pending]
    while m < min(n, widest + 1):
        top = np.argpartition(nearest, n - m - 1)[n - m - 1:]  # the m + 1 largest bounds; top[0] is the smallest
        bound, group = nearest[top[0]], top[1:]
        fresh = np.minimum(nearest[group], _squared_distances(x[group], x_sq[group], centres).min(1))
        nearest[group] = fresh  # min is idempotent: applying these picks again later changes nothing
        best = fresh.max()
        if best > bound:
            return int(group[fresh == best].min())
        m *= 4
    return None


# -- the pure functions: k candidate indices, best first ------------------------------------------------------
def random(n_candidates: int, k: int, seed: int = 0) -> np.ndarray:
    """A uniformly random k-subset: the k largest of N seeded U(0, 1) draws (random sampling baseline)."""
    return ranked(np.random.default_rng(seed).random(int(n_candidates)), k)


def entropy(probs: np.ndarray, k: int) -> np.ndarray:
    """The k candidates of largest predictive entropy H[p] (max-entropy sampling; paper 000 sec. 3.2)."""
    return ranked(entropy_scores(probs), k)


def margin(probs: np.ndarray, k: int) -> np.ndarray:
    """The k candidates of smallest top-1 − top-2 probability margin (margin sampling; Scheffer et al. 2001)."""
    return ranked(margin_scores(probs), k, largest=False)


def bald(mc_probs: np.ndarray, k: int) -> np.ndarray:
    """The k candidates of largest mutual information H[mean p] − mean H[p] (BALD; Gal et al. 2017, eq. 4)."""
    return ranked(bald_scores(mc_probs), k)


def coreset(labelled_features: np.ndarray, candidate_features: np.ndarray, k: int) -> np.ndarray:
    """k indices into the candidates by greedy k-center from the labelled pool (core-set; Sener & Savarese 2018)."""
    return k_center_greedy(labelled_features, candidate_features, k)[0]


def llal(predicted_losses: np.ndarray, k: int) -> np.ndarray:
    """The k candidates of largest predicted loss (Learning Loss for Active Learning; Yoo & Kweon 2019, sec. 3)."""
    return ranked(_array(predicted_losses, 1, "predicted_loss", "N"), k)


# -- the registry: one signature, (inputs, k, seed) -> Selection ----------------------------------------------
Acquisition = Callable[[AcquisitionInputs, int, int], Selection]


def _register(name: str, needs: tuple[str, ...]) -> Callable[[Acquisition], Acquisition]:
    def add(fn: Acquisition) -> Acquisition:
        fn.needs = needs  # type: ignore[attr-defined]  (the AcquisitionInputs fields it reads)
        return ACQUISITIONS.register(name)(fn)
    return add


def _by_rank(scores: np.ndarray, k: int, name: str, largest: bool = True) -> Selection:
    idx = ranked(scores, k, largest)
    return Selection(idx, scores, scores[idx], name, largest)


@_register("random", ())
def _random(inputs: AcquisitionInputs, k: int, seed: int) -> Selection:
    return _by_rank(np.random.default_rng(seed).random(inputs.candidates()), k, "uniform_draw")


@_register("entropy", ("probs",))
def _entropy_acq(inputs: AcquisitionInputs, k: int, seed: int) -> Selection:
    return _by_rank(entropy_scores(inputs.probs), k, "entropy")


@_register("margin", ("probs",))
def _margin_acq(inputs: AcquisitionInputs, k: int, seed: int) -> Selection:
    return _by_rank(margin_scores(inputs.probs), k, "margin", largest=False)


@_register("bald", ("mc_probs",))
def _bald_acq(inputs: AcquisitionInputs, k: int, seed: int) -> Selection:
    return _by_rank(bald_scores(inputs.mc_probs), k, "mutual_information")


@_register("coreset", ("features", "labelled_features"))
def _coreset_acq(inputs: AcquisitionInputs, k: int, seed: int) -> Selection:
    idx, picked_at, pool_distance = k_center_greedy(inputs.labelled_features, inputs.features, k)
    return Selection(idx, pool_distance, picked_at, "distance_to_labelled")


@_register("llal", ("predicted_loss",))
def _llal_acq(inputs: AcquisitionInputs, k: int, seed: int) -> Selection:
    return _by_rank(_array(inputs.predicted_loss, 1, "predicted_loss", "N"), k, "predicted_loss")


def acquire(name: str, inputs: AcquisitionInputs, k: int, seed: int = 0) -> Selection:
    """Run acquisition `name` on `inputs`: one line for an unknown name, a missing input or a budget k > N."""
    fn = ACQUISITIONS.get(name)
    missing = [f for f in fn.needs if getattr(inputs, f) is None]
    if missing:
        raise ConfigError(f"acquisition {name} needs {', '.join(missing)} (AcquisitionInputs); "
                          f"compute {'them' if len(missing) > 1 else 'it'} from the model before acquiring")
    check_budget(k, inputs.candidates())
    return fn(inputs, k, seed)
