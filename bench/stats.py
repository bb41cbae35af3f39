"""Statistics over timing samples: summaries, ratio-of-medians speedups with bootstrap intervals.

NumPy only (no torch), so `reports` can recompute speedups from the raw samples stored in
results.jsonl on a machine without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Percentile-bootstrap resamples: 2000 gives interval ends stable to about 1 % for the
# 10-50 samples a case records, in a few milliseconds.
BOOTSTRAP_RESAMPLES = 2000


def summarize(samples: Sequence[float]) -> dict[str, float | int]:
    """`{median, p20, p80, n}` of `samples` (linear-interpolated percentiles)."""
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        raise ValueError("cannot summarize an empty list of samples")
    p20, median, p80 = np.percentile(values, [20, 50, 80])
    return {"median": float(median), "p20": float(p20), "p80": float(p80), "n": int(values.size)}


def ratio_of_medians_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """median(numerator) / median(denominator) with a percentile-bootstrap interval.

    Each group is resampled with replacement on its own (the samples are step times, not pairs).
    For a speedup of B over A pass A's times as `numerator`: > 1 means B is faster.
    """
    a = np.asarray(numerator, dtype=float)
    b = np.asarray(denominator, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("both groups need at least one sample")
    rng = np.random.default_rng(seed)
    med_a = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    ratios = med_a / med_b
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return {"ratio": float(np.median(a) / np.median(b)), "ci_low": float(low), "ci_high": float(high)}


def relative_change_ci(before: Sequence[float], after: Sequence[float], **kwargs) -> dict[str, float]:
    """Relative change of the median, median(after)/median(before) - 1, with its bootstrap interval."""
    r = ratio_of_medians_ci(after, before, **kwargs)
    return {"change": r["ratio"] - 1, "ci_low": r["ci_low"] - 1, "ci_high": r["ci_high"] - 1}


def is_regression(change: dict[str, float], threshold: float = 0.05) -> bool:
    """A slowdown (time went up) whose interval excludes zero and whose size exceeds `threshold`."""
    return change["ci_low"] > 0 and change["change"] > threshold


def is_improvement(change: dict[str, float], threshold: float = 0.05) -> bool:
    return change["ci_high"] < 0 and change["change"] < -threshold
