"""Statistics over timing samples: summaries, speedups of interleaved A/B blocks with t-intervals over
the block pairs, ratios of medians (or means) with bootstrap intervals (run-vs-run changes).

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


def ratio_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    statistic: str = "median",
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """statistic(numerator) / statistic(denominator), the median or the mean, with a
    percentile-bootstrap interval.

    Each group is resampled with replacement on its own (the samples are step times, not pairs).
    For a speedup of B over A pass A's times as `numerator`: > 1 means B is faster.
    """
    a = np.asarray(numerator, dtype=float)
    b = np.asarray(denominator, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("both groups need at least one sample")
    stat = {"median": np.median, "mean": np.mean}[statistic]
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample of only zero waits
        ratios = (stat(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
                  / stat(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(ratios, [tail, 100 - tail])
    return {"ratio": float(stat(a) / stat(b)), "ci_low": float(low), "ci_high": float(high)}


# two-sided 95 % Student-t quantiles by degrees of freedom (1..30)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t95(df: float) -> float:
    """Two-sided 95 % Student-t quantile; a fractional df (Welch's) is rounded down (wider, safe).
    Beyond the table, the Cornish-Fisher expansion around the normal's 1.96 (within 1e-5 there)."""
    df = max(1, int(df))
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def _pair_log_ratios(baseline_blocks: Sequence[Sequence[float]],
                     variant_blocks: Sequence[Sequence[float]]) -> np.ndarray:
    if len(baseline_blocks) != len(variant_blocks) or not baseline_blocks:
        raise ValueError("need as many baseline blocks as variant blocks, at least one")
    return np.log([np.median(b) / np.median(v) for b, v in zip(baseline_blocks, variant_blocks, strict=True)])


def paired_blocks_ratio_ci(baseline_blocks: Sequence[Sequence[float]],
                           variant_blocks: Sequence[Sequence[float]]) -> dict[str, float | int | None]:
    """Speedup of a variant over its baseline from interleaved A/B blocks (> 1: the variant is faster).

    The block pairs, not the steps, are the independent units: steps inside a block share the GPU's
    state of the moment (clocks, temperature, the allocator), so resampling steps would claim more
    confidence than the measurement has. Per pair, r = log(median(baseline block) / median(variant
    block)); the ratio is exp(mean r) and its 95 % interval exp(mean r ± t · sd(r) / √pairs). With one
    pair there is no interval (ci_low / ci_high None)."""
    r = _pair_log_ratios(baseline_blocks, variant_blocks)
    out: dict[str, float | int | None] = {"ratio": float(np.exp(r.mean())), "ci_low": None, "ci_high": None,
                                          "pairs": int(r.size)}
    if r.size > 1:
        half = t95(r.size - 1) * r.std(ddof=1) / np.sqrt(r.size)
        out["ci_low"], out["ci_high"] = float(np.exp(r.mean() - half)), float(np.exp(r.mean() + half))
    return out


def chained_ratio_ci(a_paired: tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]],
                     b_paired: tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]]
                     ) -> dict[str, float | int | None]:
    """Speedup of A over B (> 1: A is faster) when each was interleaved with the same baseline S in its
    own process: (A vs S) / (B vs S), each pair's log-ratio as in `paired_blocks_ratio_ci`. The
    processes' own states (clocks, temperature) cancel as far as they slow S alike; the interval is
    Welch's over the two sets of pairs (`a_paired`, `b_paired`: (S's blocks, the case's blocks))."""
    ra, rb = _pair_log_ratios(*a_paired), _pair_log_ratios(*b_paired)
    out: dict[str, float | int | None] = {"ratio": float(np.exp(ra.mean() - rb.mean())), "ci_low": None,
                                          "ci_high": None, "pairs": int(min(ra.size, rb.size))}
    if ra.size > 1 and rb.size > 1:
        va, vb = ra.var(ddof=1) / ra.size, rb.var(ddof=1) / rb.size
        se = np.sqrt(va + vb)
        df = ((va + vb) ** 2 / (va**2 / (ra.size - 1) + vb**2 / (rb.size - 1)) if se > 0
              else ra.size + rb.size - 2)
        half = t95(df) * se
        log = ra.mean() - rb.mean()
        out["ci_low"], out["ci_high"] = float(np.exp(log - half)), float(np.exp(log + half))
    return out


def relative_change_ci(before: Sequence[float], after: Sequence[float], **kwargs) -> dict[str, float]:
    """Relative change of the median (or, `statistic="mean"`, of the mean: a loader's rate is its mean
    wait), after/before - 1, with its bootstrap interval (`ratio_ci`'s keywords)."""
    r = ratio_ci(after, before, **kwargs)
    return {"change": r["ratio"] - 1, "ci_low": r["ci_low"] - 1, "ci_high": r["ci_high"] - 1}


def is_regression(change: dict[str, float], threshold: float = 0.05) -> bool:
    """A slowdown (time went up) whose interval excludes zero and whose size exceeds `threshold`."""
    return change["ci_low"] > 0 and change["change"] > threshold


def is_improvement(change: dict[str, float], threshold: float = 0.05) -> bool:
    return change["ci_high"] < 0 and change["change"] < -threshold
