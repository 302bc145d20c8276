"""Breiman's strength, correlation and bound over an ensemble's votes (spec 004 §A.10, §C; paper 004 sec. 4.1)."""
import math

import numpy as np
import pytest
from scipy.stats import pearsonr

from r18lab.analysis.ensemble import (generalization_bound, mean_correlation, soft_strength_correlation,
                                      strength_correlation)
from r18lab.errors import ConfigError

LABELS = np.array([0, 0, 1, 2])
VOTES = np.array([[0, 2, 1, 2], [0, 1, 1, 1], [1, 0, 1, 0]])


def test_spec_example():
    r = strength_correlation(VOTES, LABELS, 3)
    assert r["strength"] == pytest.approx(1 / 3)
    assert r["correlation"] == pytest.approx(-0.00282, abs=5e-6)
    assert r["bound"] == pytest.approx(-0.0226, abs=5e-5)  # negative: reported, not clipped
    assert r["excluded_pairs"] == 0 and r["pairs"] == 3
    assert r["runner_up"].tolist() == [1, 1, 0, 0]  # ties → lowest class index
    assert r["margins"] == pytest.approx([1 / 3, 0, 1, 0])
    assert r["raw_margins"].tolist() == [[1, 0, 1, 1], [1, -1, 1, 0], [-1, 1, 1, -1]]
    pairs = [pearsonr(r["raw_margins"][i], r["raw_margins"][j])[0] for i, j in ((0, 1), (0, 2), (1, 2))]
    assert pairs == pytest.approx([0.8704, -0.5774, -0.3015], abs=5e-5)


def test_constant_raw_margin_pairs_are_excluded_and_counted():
    votes = VOTES.copy()
    votes[0] = LABELS  # head 1 right on every sample: rmg₁ = (1, 1, 1, 1), Pearson undefined
    r = strength_correlation(votes, LABELS, 3)
    assert r["excluded_pairs"] == 2 and r["pairs"] == 1
    assert r["strength"] == pytest.approx(5 / 12)  # margins (⅓, ⅓, 1, 0)
    assert r["correlation"] == pytest.approx(pearsonr([1, -1, 1, 0], [-1, 1, 1, -1])[0])
    assert r["bound"] == pytest.approx(r["correlation"] * (1 - (5 / 12) ** 2) / (5 / 12) ** 2)
    all_right = strength_correlation(np.tile(LABELS, (3, 1)), LABELS, 3)
    assert all_right["excluded_pairs"] == 3 and math.isnan(all_right["correlation"]) and math.isnan(all_right["bound"])


def test_num_classes_sets_the_vote_range():
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        strength_correlation(VOTES, LABELS, 2)
    r4 = strength_correlation(VOTES, LABELS, 4)  # an unused fourth class changes nothing
    assert r4["strength"] == pytest.approx(1 / 3)


def test_breiman_weighting_uses_the_raw_margin_sds():
    rmg = strength_correlation(VOTES, LABELS, 3)["raw_margins"]
    sd = rmg.std(axis=1)
    rho = np.corrcoef(rmg)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(rho[i, j] * sd[i] * sd[j] for i, j in pairs) / sum(sd[i] * sd[j] for i, j in pairs)
    r = strength_correlation(VOTES, LABELS, 3, weighting="breiman")
    assert r["correlation"] == pytest.approx(expected) and abs(expected - (-0.00282)) > 0.01
    assert mean_correlation(rmg, "paper")[0] == pytest.approx(np.mean([rho[i, j] for i, j in pairs]))
    with pytest.raises(ConfigError):
        mean_correlation(rmg, "median")


def test_bound_needs_positive_strength():
    assert generalization_bound(0.5, 0.2) == pytest.approx(0.2 * 0.75 / 0.25)
    assert math.isnan(generalization_bound(0.0, 0.2)) and math.isnan(generalization_bound(-0.1, 0.2))


def test_soft_variant_hand_example():
    probs = np.array([[[0.9, 0.1], [0.3, 0.7]], [[0.6, 0.4], [0.2, 0.8]]])  # members × samples × classes
    r = soft_strength_correlation(probs, np.array([0, 1]))
    assert r["strength"] == pytest.approx(0.5)  # mean probabilities (0.75, 0.25), (0.25, 0.75)
    assert r["raw_margins"] == pytest.approx(np.array([[0.8, 0.4], [0.2, 0.6]]))
    assert r["correlation"] == pytest.approx(-1.0) and r["bound"] == pytest.approx(-3.0)


def test_soft_variant_on_one_hot_probabilities_equals_the_vote_version():
    one_hot = np.eye(3)[VOTES]
    soft, hard = soft_strength_correlation(one_hot, LABELS), strength_correlation(VOTES, LABELS, 3)
    for key in ("strength", "correlation", "bound", "excluded_pairs"):
        assert soft[key] == pytest.approx(hard[key])


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError):
        strength_correlation(VOTES.astype(float), LABELS, 3)
    with pytest.raises(ConfigError):
        strength_correlation(VOTES, LABELS[:3], 3)
    with pytest.raises(ConfigError):
        soft_strength_correlation(np.ones((2, 4)), LABELS)
