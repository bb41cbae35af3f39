"""Micro-benchmarks: BraTS region Dice and HD95 on a 128³ case (run with --benchmark-enable).

With the project's default `--benchmark-disable` each runs once, as a plain test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from seg import metrics

SHAPE = (128, 128, 128)


@pytest.fixture(scope="module")
def case_pair() -> tuple[np.ndarray, np.ndarray]:
    """A nested tumour (edema ⊃ core ⊃ enhancing ring) and a perturbed copy, labels 0..3."""
    grid = np.indices(SHAPE).astype(np.float32)
    radius = np.sqrt(((grid - np.array([64, 60, 70])[:, None, None, None]) ** 2).sum(0))
    noise = (
        ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32), 4) * 40
    )
    ref = np.zeros(SHAPE, np.uint8)
    ref[radius + noise < 30] = 2
    ref[radius + noise < 16] = 3
    ref[radius + noise < 10] = 1
    pred = np.roll(ref, (2, -1, 1), axis=(0, 1, 2))
    return pred, ref


def test_bench_dice_128(benchmark, case_pair):
    pred, ref = case_pair
    result = benchmark(
        lambda: {
            r: metrics.dice(p, q)
            for (r, p), q in zip(
                metrics.region_masks(pred, "prepared").items(),
                metrics.region_masks(ref, "prepared").values(),
                strict=True,
            )
        }
    )
    assert all(0.5 < v < 1.0 for v in result.values())


def test_bench_hd95_128(benchmark, case_pair):
    pred, ref = case_pair
    result = benchmark(metrics.evaluate_case, pred, ref, (1.0, 1.0, 1.0), "prepared")
    assert all(0 < result[r]["hd95"] < 10 for r in metrics.REGIONS)


def test_bench_region_dice_torch_128(benchmark, case_pair):
    pred, ref = (torch.from_numpy(a.astype(np.int64))[None, None] for a in case_pair)
    result = benchmark(metrics.region_dice, pred, ref)
    # the batched torch Dice (validation's) equals the per-case numpy one (evaluation's), region by region
    masks = [metrics.region_masks(a, "prepared") for a in case_pair]
    expected = [metrics.dice(masks[0][r], masks[1][r]) for r in metrics.REGIONS]
    assert result.shape == (1, 3) and result[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert bool(((result > 0.5) & (result < 1.0)).all())
