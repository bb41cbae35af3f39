"""seg.data.synth: determinism, BraTS geometry, nested tumour labels, modality contrasts, and
that no single threshold on one modality recovers a tumour region."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from seg.data.synth import brats_affine, synth_case, write_cases
from segbench.cli import main

SHAPE = (48, 48, 32)


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.nii.gz"))}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, synth_small):
    assert main(["data", "synth", "--out", str(tmp_path / "a"), "--cases", "2", "--seed", "3",
                 "--shape", ",".join(map(str, SHAPE))]) == 0
    a = _digests(tmp_path / "a")
    assert len(a) == 10 and a == _digests(synth_small)  # fixture: same seed and shape, other run
    write_cases(tmp_path / "b", 2, seed=4, shape=SHAPE)
    b = _digests(tmp_path / "b")
    assert a.keys() == b.keys() and not set(a.values()) & set(b.values())


def test_geometry_and_dtypes_like_brats(synth_small):
    case = synth_small / "BraTS2021_00001"
    for m in ("t1", "t1ce", "t2", "flair", "seg"):
        img = nib.load(str(case / f"BraTS2021_00001_{m}.nii.gz"))
        assert img.shape == SHAPE
        np.testing.assert_array_equal(img.affine, brats_affine(SHAPE))
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert img.header.get_zooms() == (1.0, 1.0, 1.0)
        assert img.get_data_dtype() == (np.uint8 if m == "seg" else np.int16)
    assert set(np.unique(np.asarray(img.dataobj)).tolist()) == {0, 1, 2, 4}


@pytest.mark.parametrize("seed, shape",
                         [(7, (64, 64, 48)), (11, (24, 24, 24)), (11, (48, 48, 32)), (0, (16, 16, 16))])
def test_tumour_is_nested_and_inside_the_brain(seed, shape):
    """Also at small --shape, where the tumour reaches the brain's edge: the core keeps its edema; at
    the smallest (16), where the necrosis is one voxel, that voxel is off the ring too."""
    for index in range(3):
        images, seg = synth_case(seed, index, shape)
        brain = images[0] > 0
        assert not (seg > 0)[~brain].any()  # skull-stripped: tumour only in brain
        for m in range(4):  # every modality is skull-stripped alike: zero outside, signal inside
            assert (images[m][~brain] == 0).all() and (images[m][brain] > 0).mean() > 0.99, m
        core = np.isin(seg, [1, 4])
        # edema surrounds the core: growing the core by one voxel stays in the tumour, everywhere;
        # the necrosis sits inside the enhancing ring the same way
        assert (seg[binary_dilation(core)] > 0).all()
        grown = binary_dilation(seg == 1) & brain
        assert np.isin(seg[grown], [1, 4]).mean() > 0.97
        fewest = 20 if min(shape) >= 32 else 5 if min(shape) >= 24 else 1
        assert min(np.count_nonzero(seg == v) for v in (1, 2, 4)) >= fewest


def test_each_modality_has_its_own_contrast():
    images, seg = synth_case(0, 0, (96, 96, 64))
    t1, t1ce, t2, flair = (im.astype(np.float64) for im in images)
    normal = (images[0] > 0) & (seg == 0)
    edema, necrosis, ring = seg == 2, seg == 1, seg == 4
    assert flair[edema].mean() > 1.3 * flair[normal].mean()
    assert t2[edema].mean() > 1.3 * t2[normal].mean()
    assert t1ce[ring].mean() > 1.3 * t1ce[normal].mean()
    assert t1[necrosis].mean() < 0.7 * t1[normal].mean()


def _best_threshold_dice(values: np.ndarray, truth: np.ndarray) -> float:
    best = 0.0
    for t in np.quantile(values, np.linspace(0.0, 1.0, 101)):
        for pred in (values > t, values < t):
            best = max(best, 2.0 * np.count_nonzero(pred & truth) / (pred.sum() + truth.sum()))
    return best


def test_no_single_threshold_on_one_modality_recovers_a_region():
    images, seg = synth_case(0, 3, (96, 96, 64))
    brain = images[0] > 0
    regions = {"ET": seg == 4, "TC": np.isin(seg, [1, 4]), "WT": seg > 0}
    for name, truth in regions.items():
        for m, img in enumerate(images):
            dice = _best_threshold_dice(img[brain].astype(np.float32), truth[brain])
            assert dice < 0.85, (name, m, dice)


def test_zero_cases_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--out", str(tmp_path / "none"), "--cases", "0"])
    assert exit_info.value.code == 2
    assert ">= 1" in capsys.readouterr().err and not (tmp_path / "none").exists()
