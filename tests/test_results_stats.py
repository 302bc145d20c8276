"""stats: hand-computed cases, agreement with scipy.stats, degenerate inputs."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from r18lab.results.stats import mean_std, paired_t, welch_t


def test_mean_std_hand_computed() -> None:
    # mean 2.5; squared deviations 2.25+0.25+0.25+2.25 = 5; 5/3 -> sqrt = 1.2909944487358056
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)), abs=1e-15)
    # the table example: deviations -1.2, 0, 1.2 -> sqrt(2.88 / 2) = 1.2
    assert mean_std([52.51, 53.71, 54.91]) == pytest.approx((53.71, 1.2), abs=1e-12)


def test_mean_std_small_samples() -> None:
    assert mean_std([7.5]) == (7.5, 0.0)
    m, s = mean_std([])
    assert math.isnan(m) and math.isnan(s)


def test_mean_std_rejects_nested_input() -> None:
    with pytest.raises(ValueError, match="1-D"):
        mean_std([[1, 2], [3, 4]])


def test_welch_hand_computed() -> None:
    # a: mean 2, var 1 -> 1/3; b: mean 5, var 20/3 -> 5/3; se^2 = 2
    # t = -3/sqrt(2); dof = 4 / ((1/3)^2/2 + (5/3)^2/3) = 216/53
    t, dof, p = welch_t([1, 2, 3], [2, 4, 6, 8])
    assert t == pytest.approx(-3 / math.sqrt(2), rel=1e-14)
    assert dof == pytest.approx(216 / 53, rel=1e-14)
    assert p == pytest.approx(2 * sps.t.sf(3 / math.sqrt(2), 216 / 53), rel=1e-12)
    assert 0.09 < p < 0.11


@pytest.mark.parametrize("seed", range(5))
def test_welch_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(50, 2, size=3 + seed)
    b = rng.normal(51, 4, size=8 - seed)
    ref = sps.ttest_ind(a, b, equal_var=False)
    t, dof, p = welch_t(a, b)
    assert t == pytest.approx(ref.statistic, rel=1e-12)
    assert dof == pytest.approx(ref.df, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)


def test_welch_degenerate_inputs() -> None:
    assert all(math.isnan(v) for v in welch_t([1.0], [1.0, 2.0, 3.0]))
    assert all(math.isnan(v) for v in welch_t([], []))
    t, dof, p = welch_t([1, 1, 1], [1, 1])  # both constant, same mean: 0/0
    assert math.isnan(t) and math.isnan(dof) and math.isnan(p)
    t, dof, p = welch_t([1, 1, 1], [2, 2, 2])  # both constant, different means: certain difference
    assert t == -math.inf and p == 0.0 and math.isnan(dof)
    with warnings.catch_warnings():  # scipy warns about the zero variance it is being asked about
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = sps.ttest_ind([1, 1, 1], [2, 2, 2], equal_var=False)
    assert (t, p) == (ref.statistic, ref.pvalue)
    t, dof, p = welch_t([1, 1, 1], [1, 2, 3])  # one constant sample: dof = nb - 1
    assert (t, dof) == pytest.approx((-math.sqrt(3), 2.0), rel=1e-14)
    # two-sided p of Student t with 2 dof has the closed form 1 - |t| / sqrt(2 + t^2)
    assert p == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), rel=1e-12)


def test_paired_hand_computed() -> None:
    # d = [2, 3, 3, 4]: mean 3, sd sqrt(2/3), se = sqrt(2/3)/2, t = 3/se = sqrt(54), dof 3
    # t_{0.975, 3} = 3.182446305284263 (table value 3.182)
    mean, lo, hi, t, p = paired_t([3, 5, 7, 9], [1, 2, 4, 5])
    se = math.sqrt(2 / 3) / 2
    assert mean == 3.0
    assert t == pytest.approx(math.sqrt(54), rel=1e-14)
    assert (lo, hi) == pytest.approx((3 - 3.182446305284263 * se, 3 + 3.182446305284263 * se), rel=1e-12)
    assert p == pytest.approx(2 * sps.t.sf(math.sqrt(54), 3), rel=1e-12)
    assert 0.005 < p < 0.0055


@pytest.mark.parametrize("seed", range(5))
def test_paired_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 3 + seed
    b = rng.normal(50, 3, size=n)
    a = b + rng.normal(0.5, 1, size=n)
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    mean, lo, hi, t, p = paired_t(a, b)
    assert mean == pytest.approx(float(np.mean(a - b)), rel=1e-12)
    assert t == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-12)


def test_paired_confidence_level_widens_interval() -> None:
    a, b = [3, 5, 7, 9], [1, 2, 4, 5]
    _, lo95, hi95, _, _ = paired_t(a, b)
    _, lo99, hi99, _, _ = paired_t(a, b, confidence=0.99)
    ci99 = sps.ttest_rel(a, b).confidence_interval(0.99)
    assert (lo99, hi99) == pytest.approx((ci99.low, ci99.high), rel=1e-12)
    assert lo99 < lo95 and hi99 > hi95


def test_paired_degenerate_inputs() -> None:
    assert all(math.isnan(v) for v in paired_t([], []))
    mean, lo, hi, t, p = paired_t([5.0], [3.0])
    assert mean == 2.0 and all(math.isnan(v) for v in (lo, hi, t, p))
    assert paired_t([3, 4, 5], [1, 2, 3]) == (2.0, 2.0, 2.0, math.inf, 0.0)  # constant difference
    assert paired_t([1, 2, 3], [2, 3, 4]) == (-1.0, -1.0, -1.0, -math.inf, 0.0)
    mean, lo, hi, t, p = paired_t([1, 2, 3], [1, 2, 3])  # identical: 0/0
    assert (mean, lo, hi) == (0.0, 0.0, 0.0) and math.isnan(t) and math.isnan(p)
    with pytest.raises(ValueError, match="equal-length"):
        paired_t([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="confidence"):
        paired_t([1, 2], [1, 2], confidence=95)
