"""Core-set acquisition cost (issue 12): `r18lab.protocols.acquisition.coreset` choosing `--k` of `--candidates`
against `--labelled` centres, `--dim`-d float32 random features, beside a naive all-pairs version timed in the same
run (the full candidate×labelled and candidate×candidate distance matrices, then the greedy loop over them); both
must pick identical indices. Issue bound: ≤ 2 s for 1,000 of 10,000 against 10,000, 512-d.

Run: .venv/bin/python benchmarks/coreset.py [--candidates 10000] [--labelled 10000] [--k 1000] [--dim 512]
     [--rounds 1] [--seed 0] [--json OUT.json]

Each round times ours with k = 0 (the chunked start alone), the naive version, then ours (best round kept for
each); the ratio is naive ÷ ours (> 1: ours is faster). The naive version uses the same arithmetic
(‖x‖² − 2x·c + ‖c‖² in float32, argmax = lowest index, a pick never picked again), so a difference in the picks
would be a bug or a near-tie decided by float rounding, and the script stops with an AssertionError.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from r18lab.bench import finish_benchmark
from r18lab.errors import ConfigError
from r18lab.protocols.acquisition import coreset, k_center_greedy


def naive_coreset(labelled: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """All pairs at once: the N×L and N×N squared-distance matrices, then greedy k-center over them."""
    x_sq = np.einsum("ij,ij->i", candidates, candidates)
    l_sq = np.einsum("ij,ij->i", labelled, labelled)
    to_pool = x_sq[:, None] - 2 * (candidates @ labelled.T) + l_sq[None, :]
    pairs = x_sq[:, None] - 2 * (candidates @ candidates.T) + x_sq[None, :]
    nearest = np.maximum(to_pool.min(1), 0)
    picks = np.empty(k, dtype=np.int64)
    for j in range(k):
        p = int(np.argmax(nearest))
        picks[j] = p
        np.minimum(nearest, pairs[p], out=nearest)
        nearest[p] = -np.inf
    return picks


def run(candidates: int = 10_000, labelled: int = 10_000, k: int = 1_000, dim: int = 512, rounds: int = 1,
        seed: int = 0) -> dict:
    for name, value in (("--candidates", candidates), ("--labelled", labelled), ("--k", k), ("--dim", dim),
                        ("--rounds", rounds)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if k > candidates:
        raise ConfigError(f"--k {k} exceeds --candidates {candidates}; lower --k")
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((labelled, dim), dtype=np.float32)
    cand = rng.standard_normal((candidates, dim), dtype=np.float32)
    ours_s, naive_s, start_s = [], [], []
    for _ in range(rounds):
        tic = time.perf_counter()
        k_center_greedy(pool, cand, 0)  # the chunked start alone (min distances to the labelled pool)
        start_s.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        ref = naive_coreset(pool, cand, k)
        naive_s.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        got = coreset(pool, cand, k)
        ours_s.append(time.perf_counter() - tic)
        if not np.array_equal(got, ref):
            first = int(np.argmax(got != ref))
            raise AssertionError(f"coreset and the naive version differ first at pick {first}: "
                                 f"{got[first]} vs {ref[first]}")
    ours, naive = min(ours_s), min(naive_s)
    return {"candidates": candidates, "labelled": labelled, "k": k, "dim": dim, "rounds": rounds,
            "ours_s": ours, "naive_s": naive, "start_s": min(start_s), "ratio_naive_over_ours": naive / ours, "identical_picks": True,
            "ours_all_s": ours_s, "naive_all_s": naive_s, "machine": platform.processor() or platform.machine(),
            "numpy": np.__version__}


def render(r: dict) -> str:
    return "\n".join([
        f"coreset: {r['k']:,} of {r['candidates']:,} candidates against {r['labelled']:,} labelled, {r['dim']}-d "
        f"float32 (best of {r['rounds']} round(s); numpy {r['numpy']})",
        "| version | seconds | ratio to ours |", "|---|---:|---:|",
        f"| ours (chunked start, incremental min distances) | {r['ours_s']:.3f} | 1.000 |",
        f"| of which the chunked start alone (k = 0) | {r['start_s']:.3f} | |",
        f"| naive all pairs (N×L and N×N matrices) | {r['naive_s']:.3f} | {r['ratio_naive_over_ours']:.3f} |",
        f"identical picks: {r['identical_picks']}",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=10_000)
    p.add_argument("--labelled", type=int, default=10_000)
    p.add_argument("--k", type=int, default=1_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    return finish_benchmark(lambda: run(a.candidates, a.labelled, a.k, a.dim, a.rounds, a.seed), render, a.json)


if __name__ == "__main__":
    raise SystemExit(main())
