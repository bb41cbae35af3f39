import numpy as np
import pytest

from bench.stats import is_improvement, is_regression, ratio_of_medians_ci, relative_change_ci, summarize


def test_summarize_known_values():
    s = summarize([5, 1, 4, 2, 3, 10, 7, 6, 9, 8])
    assert s == {"median": 5.5, "p20": pytest.approx(2.8), "p80": pytest.approx(8.2), "n": 10}


def test_summarize_empty_is_an_error():
    with pytest.raises(ValueError):
        summarize([])


def test_ratio_of_medians_interval_brackets_a_true_twofold_speedup():
    rng = np.random.default_rng(1)
    slow = 0.2 * (1 + 0.05 * rng.standard_normal(30))
    fast = 0.1 * (1 + 0.05 * rng.standard_normal(30))
    r = ratio_of_medians_ci(slow, fast)
    assert r["ratio"] == pytest.approx(np.median(slow) / np.median(fast))
    assert r["ci_low"] < r["ratio"] < r["ci_high"]
    assert 1.8 < r["ci_low"] and r["ci_high"] < 2.2


def test_ratio_interval_is_deterministic_and_wide_for_noise():
    a = [1.0, 3.0, 1.0, 3.0, 2.0]
    assert ratio_of_medians_ci(a, a) == ratio_of_medians_ci(a, a)
    r = ratio_of_medians_ci(a, a)
    assert r["ratio"] == 1.0 and r["ci_low"] < 1.0 < r["ci_high"]


def test_regression_needs_size_and_an_interval_excluding_zero():
    rng = np.random.default_rng(2)
    before = 0.100 * (1 + 0.02 * rng.standard_normal(20))
    slower = 0.120 * (1 + 0.02 * rng.standard_normal(20))
    barely = 0.102 * (1 + 0.02 * rng.standard_normal(20))
    big = relative_change_ci(before, slower)
    assert big["change"] == pytest.approx(0.2, abs=0.03) and is_regression(big)
    assert not is_regression(relative_change_ci(before, barely))
    assert is_improvement(relative_change_ci(slower, before)) and not is_regression(
        relative_change_ci(slower, before)
    )
