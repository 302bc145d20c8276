"""Topology metrics of pruning masks (spec 002a §1.5–1.7, exact checks of §3 item 4) on hand-made graphs."""
import math

import pytest
import torch

from r18lab.analysis.masks import (biadjacency, distance_terms, imdb, layer_topology, mask_topology, narc,
                                   network_coordinate, spectral_distance, top_singular_values)
from r18lab.errors import ConfigError

SQ2 = math.sqrt(2)


def adjacency_abs_eigs(b: torch.Tensor) -> torch.Tensor:
    """|eigenvalues| of A = [[0, Bᵀ], [B, 0]], largest first (the route the spec's sources take)."""
    m, n = b.shape
    a = torch.zeros(m + n, m + n, dtype=torch.float64)
    a[:n, n:] = b.T
    a[n:, :n] = b
    return torch.linalg.eigvalsh(a).abs().sort(descending=True).values


def circulant(n: int, offsets) -> torch.Tensor:
    """B[i, j] = 1 iff (j − i) mod n ∈ offsets: every row and column has degree len(offsets)."""
    b = torch.zeros(n, n)
    for i in range(n):
        for s in offsets:
            b[i, (i + s) % n] = 1
    return b


def random_mask(shape, density, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def test_complete_bipartite_k33():
    r = layer_topology(torch.ones(3, 3), torch.ones(3, 3))
    assert (r["sigma1"], r["sigma2"]) == pytest.approx((3.0, 0.0), abs=1e-12)
    assert r["delta_r"] == pytest.approx(2 * SQ2) and r["delta_s"] == pytest.approx(2 * SQ2)
    assert r["delta_mean"] == pytest.approx(2 * SQ2)  # every node has degree 3
    assert r["weighted_gap"] == pytest.approx(3.0)
    assert r["delta_r_norm"] == pytest.approx(1.0) and r["delta_s_norm"] == pytest.approx(1.0)
    assert r["narc"] == pytest.approx(1 / 3)  # ((0 + 1)·√9 − |9 − (3/3)·9|)/(3·3)
    assert not r["collapsed"] and r["reason"] == ""
    assert math.isnan(layer_topology(torch.ones(3, 3))["weighted_gap"])  # no weight, no λ
    assert layer_topology(torch.ones(3, 3), 2 * torch.ones(3, 3))["weighted_gap"] == pytest.approx(6.0)


def test_perfect_matching_is_collapsed():
    r = layer_topology(torch.eye(3), torch.ones(3, 3))
    assert r["collapsed"] and "collapse" in r["reason"]
    assert (r["mean_degree_left"], r["mean_degree_right"]) == (1.0, 1.0)
    assert (r["sigma1"], r["sigma2"]) == pytest.approx((1.0, 1.0))  # σ = (1, 1, 1), still reported
    for key in ("delta_s", "delta_r", "delta_mean", "weighted_gap", "imdb_r", "weighted_imdb", "narc"):
        assert math.isnan(r[key]), key
    # min_degree is the threshold: degree-1 graphs pass at 1, a 3-regular graph fails at 4
    loose = layer_topology(torch.eye(3), min_degree=1)
    assert not loose["collapsed"] and loose["delta_r"] == pytest.approx(-1.0)  # √0 + √0 − 1
    assert math.isnan(loose["delta_r_norm"])  # bound 0: no ratio
    assert layer_topology(circulant(7, (0, 1, 3)), min_degree=4)["collapsed"]
    empty = layer_topology(torch.zeros(4, 2, 3, 3))
    assert empty["collapsed"] and empty["reason"] == "no kept weights" and empty["kept"] == 0


def test_fano_plane_has_known_second_singular_value():
    # difference set {0, 1, 3} mod 7: B Bᵀ = 2I + J ⇒ σ = (3, √2 × 6); a 3-regular Ramanujan graph
    b = circulant(7, (0, 1, 3))
    r = layer_topology(b, 2 * b)
    assert r["sigma1"] == pytest.approx(3.0) and r["sigma2"] == pytest.approx(SQ2)
    assert r["delta_r"] == pytest.approx(2 * SQ2 - SQ2) and r["delta_s"] == pytest.approx(SQ2)
    assert r["weighted_gap"] == pytest.approx(2 * (3 - SQ2))
    assert r["narc"] == pytest.approx((0.5 + 1) * 7 / 49)  # E = 21 = (3/7)·7·7: second term 0


def test_consecutive_circulant_closed_form():
    # offsets {0, 1, 2} mod 7: σ_k = |1 + ω^k + ω^2k| with ω = e^{2πi/7} ⇒ σ2 = 1 + 2cos(2π/7) > 2√2 − 1
    b = circulant(7, (0, 1, 2))
    mu_hat = 1 + 2 * math.cos(2 * math.pi / 7)
    r = layer_topology(b)
    assert r["sigma2"] == pytest.approx(mu_hat, abs=1e-12)
    assert r["delta_r"] == pytest.approx(2 * SQ2 - mu_hat) and r["delta_s"] == pytest.approx(2 * SQ2 - mu_hat)


def test_svd_route_agrees_with_adjacency_eigenvalues():
    mask = random_mask((24, 8, 3, 3), 0.3, seed=1)
    weight = torch.randn(24, 8, 3, 3, generator=torch.Generator().manual_seed(2))
    b, bw = biadjacency(mask, weight)
    assert b.shape == (24, 72) and torch.equal(bw, (weight * mask).abs().reshape(24, 72).double())
    eig, eig_w = adjacency_abs_eigs(b), adjacency_abs_eigs(bw)
    assert eig[0] == pytest.approx(eig[1]) and eig[2] == pytest.approx(eig[3])  # ±σ pairs
    r = layer_topology(mask, weight)
    assert not r["collapsed"] and r["n_left"] == int((b.sum(0) > 0).sum()) and r["n_right"] == 24
    assert r["sigma1"] == pytest.approx(float(eig[0])) and r["sigma2"] == pytest.approx(float(eig[2]))  # THIRD
    assert r["weighted_gap"] == pytest.approx(float(eig_w[0] - eig_w[2]))
    dl, dr = float(b.sum()) / r["n_left"], float(b.sum()) / 24
    assert r["delta_r"] == pytest.approx(math.sqrt(dl - 1) + math.sqrt(dr - 1) - float(eig[2]))
    # the Gram route used for large layers gives the same σ
    assert top_singular_values(bw, gram_above=0) == pytest.approx(top_singular_values(bw, gram_above=10**9))
    assert top_singular_values(bw.T, gram_above=0) == pytest.approx([float(eig_w[0]), float(eig_w[2])])


def test_second_abs_eigenvalue_reading_gives_zero_gap():
    """The public PAGS re-implementation takes μ̂ = 2nd |eig| of A = σ1 ⇒ λ ≡ 0; ours takes the 3rd (= σ2)."""
    b = circulant(7, (0, 1, 3))
    w = torch.rand(7, 7, generator=torch.Generator().manual_seed(3)) + 0.5
    eig = adjacency_abs_eigs((b * w).double())
    assert float(eig[0] - eig[1]) == pytest.approx(0.0, abs=1e-10)  # the bug's λ
    ours = layer_topology(b, w)["weighted_gap"]
    assert ours > 0.5 and ours == pytest.approx(float(eig[0] - eig[2]))


def test_imdb_two_left_degree_classes_by_hand():
    # 4 outputs × 7 inputs: inputs 0–2 connect to all 4 outputs (degree 4), inputs 3–6 to all but one (degree 3)
    b = torch.cat([torch.ones(4, 3), torch.ones(4, 4) - torch.eye(4)], dim=1)
    w = torch.cat([torch.ones(4, 3), 2 * torch.ones(4, 4)], dim=1)
    # class δ=4: K_{4,3}: σ = (√12, 0), d̄_L = 4, d̄_R = 3;  class δ=3: J − I: σ = (3, 1), d̄ = 3, 3
    ds = [2 * math.sqrt(math.sqrt(12) - 1) - 0, 2 * SQ2 - 1]
    dr = [math.sqrt(3) + SQ2 - 0, 2 * SQ2 - 1]
    lam = [math.sqrt(12) - 0, 2 * (3 - 1)]
    r = layer_topology(b, w)
    assert r["imdb_count"] == 2
    assert r["imdb_s"] == pytest.approx(sum(ds) / 2) and r["imdb_r"] == pytest.approx(sum(dr) / 2)
    assert r["weighted_imdb"] == pytest.approx(sum(lam) / 2)
    # a degree class of 2 inputs is left out (predecessor: ≥ 3 nodes per class); visible at min_degree 2
    b2 = torch.cat([b, torch.tensor([[1.0, 1], [1, 1], [0, 0], [0, 0]])], dim=1)
    assert imdb(b2, min_degree=2)["imdb_count"] == 2
    assert imdb(b2, min_degree=2, min_class=2)["imdb_count"] == 3
    assert imdb(b2, min_degree=4)["imdb_count"] == 0  # the δ=3 class collapses, δ=4 has d̄_R = 3 < 4


def test_narc_hand_case_with_isolated_nodes():
    # K_{3,3} inside a 4 × 5 layer: n_L = n_R = 3 after dropping isolated nodes, E = 9, d̄_L = 3, μ̂ = 0
    b = torch.zeros(4, 5)
    b[:3, :3] = 1
    r = layer_topology(b)
    assert (r["n_left"], r["n_right"], r["kept"]) == (3, 3, 9)
    assert r["mean_degree_left"] == 3 and r["mean_degree_right"] == 3  # not 9/5, 9/4: zero degrees removed
    assert r["narc"] == pytest.approx((3 - abs(9 - 3 / 4 * 9)) / 20)  # = 0.0375
    assert narc(2.0, 9, 5, 4, 3.0, 3, 3) == pytest.approx((2 * 3 - 2.25) / 20)
    assert r["delta_r"] == pytest.approx(2 * SQ2)


def _row(kept, density, delta_r, lam):
    return {"kept": kept, "density": density, "delta_r": delta_r, "weighted_gap": lam, "reason": ""}


def test_valid_layers_and_spectral_distance():
    layers = {"a": _row(1001, 0.5, 3.0, 4.0), "b": _row(1000, 0.5, 1.0, 1.0),  # b: not > 1000 kept
              "c": _row(5000, 1e-3, 1.0, 1.0), "d": _row(5000, 0.2, math.nan, 2.0),  # c: density; d: collapsed
              "e": _row(2000, 0.01, -1.0, 0.0)}
    net = network_coordinate(layers)
    assert net["names"] == ["a", "e"] and set(net["excluded"]) == {"b", "c", "d"}
    assert net["coordinates"].tolist() == [[3.0, 4.0], [-1.0, 0.0]]
    assert spectral_distance(layers) == pytest.approx(5.0 + 1.0)
    assert spectral_distance(layers, min_kept=999) == pytest.approx(5.0 + 1.0 + SQ2)  # b enters
    assert spectral_distance(layers, min_density=1e-4) == pytest.approx(6.0 + SQ2)  # c enters
    assert spectral_distance(layers, coords=("delta_r",)) == pytest.approx(3.0 + 1.0)
    assert spectral_distance(layers, layers) == 0.0
    ref = {n: _row(1, 1, 1.0, 1.0) for n in layers}
    assert spectral_distance(layers, ref) == pytest.approx(math.hypot(2, 3) + math.hypot(2, 1))
    assert distance_terms(layers, ref) == pytest.approx({"a": math.hypot(2, 3), "e": math.hypot(2, 1)})
    with pytest.raises(ConfigError, match="no layer"):
        spectral_distance(layers, {"a": ref["a"]})


def test_mask_topology_on_masks_and_distance_to_itself():
    masks = {"conv.weight": random_mask((32, 16, 3, 3), 0.3, 4), "fc.weight": random_mask((10, 32), 0.5, 5)}
    weights = {n: torch.randn(m.shape, generator=torch.Generator().manual_seed(6)) for n, m in masks.items()}
    rows = mask_topology(masks, weights)
    assert [r["name"] for r in rows] == ["conv.weight", "fc.weight"] and rows[0]["shape"] == [32, 16, 3, 3]
    assert rows[0]["kept"] == int(masks["conv.weight"].sum()) > 1000  # valid: in D
    assert rows[0]["density"] == pytest.approx(rows[0]["kept"] / 4608)
    assert spectral_distance(rows, rows) == 0.0
    assert spectral_distance(rows) == pytest.approx(math.hypot(rows[0]["delta_r"], rows[0]["weighted_gap"]))
    with pytest.raises(ConfigError, match="differs"):
        layer_topology(masks["fc.weight"], torch.ones(32, 10))
