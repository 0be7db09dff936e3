"""Confidence intervals: mean ± normal or Student-t half-width, and the quantiles they need.

NUMPY ONLY, and no scipy: the serving image imports this module without torch (a test pins it).
``mean_confidence_interval`` is the 95% interval across few-shot episodes (CONTRACTS);
``t_confidence_interval`` is the one for a few runs (across seeds).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["mean_confidence_interval", "normal_quantile", "t_confidence_interval", "t_critical"]


def _check_values(values: npt.ArrayLike) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) == 0:
        raise ValueError("a confidence interval needs at least one value, got 0")
    return v


def mean_confidence_interval(values: npt.ArrayLike, z: float = 1.96) -> tuple[float, float]:
    """Mean and normal-approximation 95% half-width ``z·σ/√n`` (across episodes; CONTRACTS).

    ``σ`` is the sample standard deviation (``ddof=1``). With a single value the spread is unknown
    and the half-width is NaN (not 0, which would claim certainty).

    Args:
        values: ``(n,)``.
        z: the normal quantile, 1.96 for 95%.

    Returns:
        ``(mean, half_width)``.
    """
    v = _check_values(values)
    if len(v) == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(len(v)))


def t_confidence_interval(values: npt.ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and Student-t half-width ``t·σ/√n`` for a few runs (across seeds; t = 4.303 at n = 3).

    ``σ`` is the sample standard deviation (``ddof=1``), ``t = t_critical(n - 1, confidence)``. With a
    single value the half-width is NaN.

    Args:
        values: ``(n,)``, e.g. one accuracy per seed.
        confidence: two-sided coverage.

    Returns:
        ``(mean, half_width)``.
    """
    v = _check_values(values)
    if len(v) == 1:
        return float(v[0]), math.nan
    t = t_critical(len(v) - 1, confidence)
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(len(v)))


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    for _ in range(200):  # f increasing; far more halvings than float64 needs
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _t_central_probability(theta: float, df: int) -> float:
    """P(|T| < √df·tan θ) for integer df, exact (Abramowitz & Stegun 26.7.3)."""
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        term = total = c
        for j in range(1, (df - 1) // 2):
            term *= c * c * (2 * j) / (2 * j + 1)
            total += term
        return 2.0 / math.pi * (theta + (s * total if df > 1 else 0.0))
    term = total = 1.0
    for j in range(1, df // 2):
        term *= c * c * (2 * j - 1) / (2 * j)
        total += term
    return s * total


def normal_quantile(p: float) -> float:
    """Inverse standard normal CDF, by bisection on ``math.erf`` (no scipy)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    return _bisect(lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))), p, -40.0, 40.0)


def t_critical(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value: ``P(|T_df| < t) = confidence`` (no scipy).

    Exact series inversion for ``df <= 1000`` (A&S 26.7.3), Cornish-Fisher expansion beyond
    (A&S 26.7.5, error far below 1e-9 there). ``t_critical(2) = 4.303``, ``t_critical(9) = 2.262``.

    Args:
        df: degrees of freedom, ``n - 1`` for ``n`` values; at least 1.
        confidence: two-sided coverage in (0, 1).

    Returns:
        The critical value ``t > 0``.
    """
    if int(df) != df or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    df = int(df)
    if df > 1000:
        x = normal_quantile(0.5 + confidence / 2.0)
        g1 = (x**3 + x) / 4
        g2 = (5 * x**5 + 16 * x**3 + 3 * x) / 96
        g3 = (3 * x**7 + 19 * x**5 + 17 * x**3 - 15 * x) / 384
        g4 = (79 * x**9 + 776 * x**7 + 1482 * x**5 - 1920 * x**3 - 945 * x) / 92160
        return x + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
    theta = _bisect(lambda th: _t_central_probability(th, df), confidence, 0.0, math.pi / 2)
    return math.sqrt(df) * math.tan(theta)
