"""BraTS metrics (seg.metrics): hand-computed cases, conventions, the real pair, the seed's Dice.
`segbench eval` (seg.commands.evaluate) is tested in test_eval_cli.py."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from seg import metrics


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask)


def _scipy_hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """Independent HD95: Euclidean distance transforms of the other mask's edge voxels, both ways."""
    ep, er = _edges(pred), _edges(ref)
    d_pred_to_ref = ndimage.distance_transform_edt(~er, sampling=spacing)[ep]
    d_ref_to_pred = ndimage.distance_transform_edt(~ep, sampling=spacing)[er]
    return max(np.percentile(d_pred_to_ref, 95), np.percentile(d_ref_to_pred, 95))


def test_empty_conventions():
    empty = np.zeros((8, 8, 8), bool)
    full = empty.copy()
    full[2:5, 2:5, 2:5] = True
    assert metrics.dice(empty, empty) == 1.0 and metrics.hd95(empty, empty) == 0.0
    assert metrics.dice(full, empty) == 0.0 and metrics.hd95(full, empty) == metrics.EMPTY_HD95_MM == 373.13
    assert metrics.dice(empty, full) == 0.0 and metrics.hd95(empty, full) == 373.13


def test_dice_known_overlap():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[0, 0, :8] = True  # 8 voxels
    b[0, 0, 4:] = True  # 6 voxels, 4 shared
    assert metrics.dice(a, b) == pytest.approx(2 * 4 / (8 + 6))
    assert metrics.dice(a, a) == 1.0


def test_hd95_anisotropic_spacing_planes_and_points():
    spacing = (0.5, 0.7, 2.0)
    a = np.zeros((6, 6, 12), bool)
    b = np.zeros_like(a)
    a[:, :, 2] = True
    b[:, :, 5] = True  # every voxel of each plane is 3 slices (3 × 2.0 mm) from the other plane
    assert metrics.hd95(a, b, spacing) == pytest.approx(6.0)
    p = np.zeros((9, 9, 9), bool)
    q = np.zeros_like(p)
    p[1, 1, 1] = True
    q[4, 5, 1] = True  # single voxels: 3 × 0.5 mm along x, 4 × 0.7 mm along y
    assert metrics.hd95(p, q, spacing) == pytest.approx(np.hypot(1.5, 2.8), rel=1e-6)


def test_hd95_is_a_percentile_not_the_maximum():
    a = np.zeros((10, 10, 12), bool)
    a[:, :, 0] = True  # 100 edge voxels
    b = a.copy()
    b[5, 5, 9] = True  # one far outlier: 9 slices × 1.5 mm away
    spacing = (1.0, 1.0, 1.5)
    # b→a distances: 100 zeros and one 13.5; their 95th percentile is 0, the maximum 13.5.
    assert metrics.hd95(a, b, spacing) == pytest.approx(0.0)
    assert metrics.hd95(a, b, spacing) == pytest.approx(_scipy_hd95(a, b, spacing))


def test_hd95_matches_scipy_on_random_blobs():
    rng = np.random.default_rng(0)
    spacing = (1.0, 0.8, 2.5)
    a = ndimage.gaussian_filter(rng.random((40, 36, 20)), 3) > 0.5
    b = ndimage.gaussian_filter(rng.random((40, 36, 20)), 3) > 0.5
    assert a.any() and b.any()
    assert metrics.hd95(a, b, spacing) == pytest.approx(_scipy_hd95(a, b, spacing), rel=1e-5)


def test_regions_2021_vs_2023():
    labels_2021 = np.array([0, 1, 2, 4, 4, 2], dtype=np.uint8).reshape(1, 2, 3)
    labels_2023 = np.where(labels_2021 == 4, 3, labels_2021)
    m21 = metrics.region_masks(labels_2021, "2021")
    m23 = metrics.region_masks(labels_2023, "2023")
    for region, expected in {
        "ET": [0, 0, 0, 1, 1, 0],
        "TC": [0, 1, 0, 1, 1, 0],
        "WT": [0, 1, 1, 1, 1, 1],
    }.items():
        assert m21[region].ravel().tolist() == [bool(v) for v in expected]
        assert np.array_equal(m21[region], m23[region])
    # 2023 labels read with the 2021 convention lose ET: the checks catch it.
    with pytest.raises(ValueError, match=r"label values \[3\] are outside the 2021"):
        metrics.check_labels(labels_2023, "2021", "x.nii.gz")
    assert metrics.detect_convention(labels_2021) == "2021"
    assert metrics.detect_convention(labels_2023) == "2023"


def test_evaluate_case_hand_computed():
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:6, 2:6, 2:6] = 2  # edema 64
    ref[3:5, 3:5, 3:5] = 4  # ET 8
    pred = ref.copy()
    pred[3:5, 3:5, 3] = 1  # 4 of the 8 ET voxels called necrosis
    r = metrics.evaluate_case(pred, ref, (1, 1, 1), "2021")
    assert r["ET"]["dice"] == pytest.approx(2 * 4 / (4 + 8))
    assert r["TC"]["dice"] == 1.0 and r["WT"]["dice"] == 1.0
    assert r["TC"]["hd95"] == 0.0 and r["WT"]["hd95"] == 0.0
    assert r["ET"]["hd95"] == pytest.approx(1.0)  # ET slab z=3 removed: its voxels are 1 mm from z=4
    # ET: 4 of 8 found; no false positive among the 12³ - 8 voxels outside it; TC: the 4 now necrosis
    assert r["ET"]["sensitivity"] == 0.5 and r["ET"]["specificity"] == 1.0
    assert r["TC"]["sensitivity"] == 1.0 and r["WT"]["specificity"] == 1.0
    over = ref.copy()
    over[8:10, 8:10, 8:10] = 2  # 8 false-positive WT voxels, outside the labelled box of the rest
    wt = metrics.evaluate_case(over, ref, (1, 1, 1), "2021")["WT"]
    assert wt["sensitivity"] == 1.0 and wt["specificity"] == pytest.approx(1 - 8 / (12**3 - 64))
    nothing = metrics.evaluate_case(np.zeros_like(ref), np.zeros_like(ref))["ET"]  # nothing to find
    assert nothing["sensitivity"] == 1.0 and nothing["specificity"] == 1.0
    # Seed metric: labels 1 (pred 4 voxels, ref none → NaN, left out), 2 (equal), 3 (ET 2/3).
    assert metrics.seed_dice(pred, ref, "2021") == pytest.approx((1.0 + 2 * 4 / 12) / 2)


def test_evaluate_case_on_the_labelled_box_equals_the_whole_volume():
    """evaluate_case scores the labelled voxels' bounding box (+2): the same numbers as the region
    masks of the whole volume, with tumours touching the volume's faces and anisotropic spacing."""
    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(6):
        x = ((rng.random((20, 24, 18)) < 0.03) * rng.choice([1, 2, 4], (20, 24, 18))).astype(np.uint8)
        pairs.append((x, np.roll(x, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 3)))))
    border = np.zeros((30, 30, 20), np.uint8)
    border[0:6, 4:12, 14:20] = 2
    border[0:3, 5:9, 17:20] = 4
    pairs += [(border, np.roll(border, 1, axis=1)), (np.zeros_like(border), border),
              (np.zeros_like(border), np.zeros_like(border))]
    for spacing in ((1.0, 1.0, 1.0), (0.8, 1.2, 2.0)):
        for pred, ref in pairs:
            whole_pred, whole_ref = metrics.region_masks(pred), metrics.region_masks(ref)
            expected = {r: {"dice": metrics.dice(whole_pred[r], whole_ref[r]),
                            "hd95": metrics.hd95(whole_pred[r], whole_ref[r], spacing),
                            **dict(zip(("sensitivity", "specificity"),
                                       metrics.sensitivity_specificity(whole_pred[r], whole_ref[r]),
                                       strict=True))}
                        for r in metrics.REGIONS}
            assert metrics.evaluate_case(pred, ref, spacing) == expected
    assert metrics._labelled_box(border, border) == (slice(0, 8), slice(2, 14), slice(12, 20))


def test_region_dice_batched_torch():
    target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 3
    target[0, 0, 2] = 2
    pred = target.clone()
    pred[0, 0, 0] = 1  # half the ET becomes necrosis: ET 0.5·… TC/WT unchanged
    logits = torch.nn.functional.one_hot(pred[:, 0], 4).permute(0, 4, 1, 2, 3).float()
    for inp in (logits, pred, pred[:, 0]):
        d = metrics.region_dice(inp, target)
        assert d.shape == (2, 3) and d.dtype == torch.float32
        assert d[0].tolist() == pytest.approx([2 * 16 / (16 + 32), 1.0, 1.0])
        assert d[1].tolist() == [1.0, 1.0, 1.0]  # sample 1: everything empty on both sides
    only_pred = torch.zeros_like(target)
    only_pred[1, 0, 0, 0, 0] = 2
    assert metrics.region_dice(only_pred, torch.zeros_like(target))[1].tolist() == [1.0, 1.0, 0.0]


def test_real_pair(shared_data):
    ref_img = nib.load(shared_data / "brats2021/BraTS2021_90001/BraTS2021_90001_seg.nii.gz")
    pred_img = nib.load(shared_data / "brats2021-predictions/BraTS2021_90001_pred-yixinmpl20.nii.gz")
    ref, pred = np.asanyarray(ref_img.dataobj), np.asanyarray(pred_img.dataobj)
    spacing = ref_img.header.get_zooms()[:3]
    r = metrics.evaluate_case(pred, ref, spacing, "2021")
    for region in metrics.REGIONS:
        p, q = metrics.region_masks(pred)[region], metrics.region_masks(ref)[region]
        # Two BraTS 2020 algorithms on one case agree closely but not perfectly.
        assert 0.9 < r[region]["dice"] < 1.0
        assert r[region]["dice"] == pytest.approx(2 * (p & q).sum() / (p.sum() + q.sum()))
        box = tuple(
            slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects((p | q).astype(int))[0]
        )
        assert r[region]["hd95"] == pytest.approx(_scipy_hd95(p[box], q[box], spacing), rel=1e-5)
        assert 0 < r[region]["hd95"] < 10
    assert 0.8 < metrics.seed_dice(pred, ref, "2021") < 1.0


def test_seed_dice_equals_monai_dice_metric():
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    for trial in range(6):
        present = rng.choice([0, 1, 2, 4], size=2 + trial % 3, replace=False)  # some labels absent
        ref = rng.choice(present, size=(12, 10, 8)).astype(np.int16)
        pred = rng.choice([0, 1, 2, 4], size=(12, 10, 8)).astype(np.uint8)
        p, r = (torch.as_tensor(np.where(a == 4, 3, a)).long()[None, None] for a in (pred, ref))
        expected = torch.nanmean(compute_dice(p, r, include_background=False, num_classes=4)).item()
        got = metrics.seed_dice(pred, ref, "2021")
        assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected, rel=1e-6)
