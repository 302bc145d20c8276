"""Small-sample statistics for comparing runs: mean/std, Welch's t-test, paired t-test with CI.

All functions are pure, take sequences of numbers, and never raise on degenerate input
(too few values, zero variance): they return nan where a quantity is undefined.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _sps

NAN = float("nan")


def _as_array(values: Sequence[float]) -> np.ndarray:
    """1-D float64 array of `values`."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of numbers, got shape {arr.shape}")
    return arr


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std) with std = sqrt(sum((x - mean)^2) / (n - 1)); std = 0 for n = 1, (nan, nan) for n = 0."""
    x = _as_array(values)
    n = x.size
    if n == 0:
        return NAN, NAN
    mean = float(x.mean())
    if n == 1:
        return mean, 0.0
    return mean, float(x.std(ddof=1))


def welch_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Welch's two-sided t-test of mean(a) - mean(b): (t, dof, p).

    t = (ma - mb) / sqrt(va/na + vb/nb);
    dof = (va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1))  (Welch–Satterthwaite);
    p = 2 * P(T_dof > |t|).
    Fewer than 2 values in either sample -> (nan, nan, nan). Both samples constant:
    equal means -> t = p = nan; different means -> t = ±inf, p = 0, dof = nan.
    """
    xa, xb = _as_array(a), _as_array(b)
    na, nb = xa.size, xb.size
    if na < 2 or nb < 2:
        return NAN, NAN, NAN
    diff = float(xa.mean() - xb.mean())
    sa = float(xa.var(ddof=1)) / na
    sb = float(xb.var(ddof=1)) / nb
    se2 = sa + sb
    if se2 == 0.0:
        return _inf_or_nan(diff), NAN, _p_for_zero_se(diff)
    t = diff / math.sqrt(se2)
    dof = se2 * se2 / (sa * sa / (na - 1) + sb * sb / (nb - 1))
    return t, dof, _two_sided_p(t, dof)


def paired_t(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float, float, float]:
    """Paired t-test on d = a - b: (mean_diff, ci_low, ci_high, t, p).

    t = mean(d) / (sd(d) / sqrt(n)), dof = n - 1, p two-sided;
    CI = mean(d) ± t_{(1+confidence)/2, n-1} * sd(d) / sqrt(n).
    n = 0 -> all nan; n = 1 -> mean_diff = d, rest nan. Constant differences: CI collapses
    to (mean, mean); mean != 0 -> t = ±inf, p = 0; mean == 0 -> t = p = nan.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xa, xb = _as_array(a), _as_array(b)
    if xa.size != xb.size:
        raise ValueError(f"paired_t needs equal-length samples, got {xa.size} and {xb.size}")
    d = xa - xb
    n = d.size
    if n == 0:
        return NAN, NAN, NAN, NAN, NAN
    mean = float(d.mean())
    if n == 1:
        return mean, NAN, NAN, NAN, NAN
    se = float(d.std(ddof=1)) / math.sqrt(n)
    dof = n - 1
    if se == 0.0:
        return mean, mean, mean, _inf_or_nan(mean), _p_for_zero_se(mean)
    t = mean / se
    half = float(_sps.t.ppf(0.5 + confidence / 2, dof)) * se
    return mean, mean - half, mean + half, t, _two_sided_p(t, dof)


def _two_sided_p(t: float, dof: float) -> float:
    """p = 2 * P(T_dof > |t|) (survival function, accurate for large |t|)."""
    if math.isnan(t) or math.isnan(dof):
        return NAN
    return float(min(1.0, 2.0 * _sps.t.sf(abs(t), dof)))


def _inf_or_nan(diff: float) -> float:
    """t statistic for a zero standard error: ±inf for a nonzero difference, nan for 0/0."""
    if diff == 0.0 or math.isnan(diff):
        return NAN
    return math.copysign(math.inf, diff)


def _p_for_zero_se(diff: float) -> float:
    """p for a zero standard error: 0 for a nonzero difference, nan for 0/0."""
    if diff == 0.0 or math.isnan(diff):
        return NAN
    return 0.0
