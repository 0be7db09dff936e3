"""Tests for clce_core.stats: normal and Student-t confidence intervals, quantiles (numpy only)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clce_core.stats import mean_confidence_interval, normal_quantile, t_confidence_interval, t_critical


def test_mean_confidence_interval_direct():
    values = np.array([80.0, 86.7, 93.3, 73.3, 100.0, 66.7])
    mean, half = mean_confidence_interval(values)
    n = len(values)
    sigma = math.sqrt(sum((v - values.mean()) ** 2 for v in values) / (n - 1))  # ddof = 1
    assert mean == pytest.approx(values.mean())
    assert half == pytest.approx(1.96 * sigma / math.sqrt(n))
    m1, h1 = mean_confidence_interval([42.0])
    assert m1 == 42.0 and math.isnan(h1)
    with pytest.raises(ValueError, match="at least one value, got 0"):
        mean_confidence_interval([])


@pytest.mark.parametrize(
    ("n", "t"), [(2, 12.706), (3, 4.303), (5, 2.776), (10, 2.262), (31, 2.042), (121, 1.980)]
)
def test_t_critical_table(n, t):
    assert t_critical(n - 1) == pytest.approx(t, abs=5e-4)


def test_t_critical_limits_and_errors():
    assert t_critical(10**7) == pytest.approx(1.959964, abs=1e-6)
    assert t_critical(1000) == pytest.approx(t_critical(1001), abs=1e-5)  # series meets expansion
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError, match="positive integer, got 0"):
        t_critical(0)
    with pytest.raises(ValueError, match=r"\(0, 1\), got 1.5"):
        t_critical(3, 1.5)


def test_t_critical_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 4, 7, 12, 29, 30, 64, 500, 1000, 1001, 4000]:
        for conf in (0.8, 0.9, 0.95, 0.99):
            assert t_critical(df, conf) == pytest.approx(stats.t.ppf(0.5 + conf / 2, df), abs=1e-8)


def test_t_confidence_interval_three_seeds():
    values = [84.1, 85.3, 86.2]
    mean, half = t_confidence_interval(values)
    assert mean == pytest.approx(np.mean(values))
    assert half == pytest.approx(4.302653 * np.std(values, ddof=1) / math.sqrt(3), rel=1e-6)
    assert math.isnan(t_confidence_interval([1.0])[1])
