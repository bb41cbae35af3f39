"""seg.data.inverse: a label map survives prep -> inverse on the real cases (Dice >= 0.95 per
region, exact source grid), also through the oblique 5.5 mm native scans."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from seg.data.cases import discover
from seg.data.prep import PrepConfig, label_to_original, prepare_case, to_convention


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _regions(labels: np.ndarray, et: int) -> dict[str, np.ndarray]:
    return {"ET": labels == et, "TC": np.isin(labels, [1, et]), "WT": np.isin(labels, [1, 2, et])}


@pytest.mark.parametrize("case_id", ["BraTS2021_90001", "BraTS2021_90002", "BraTS-GLI-90003-000"])
def test_prep_then_inverse_recovers_the_original_seg(real_prepared, case_id):
    case, out = real_prepared[case_id]
    seg_img = nib.load(str(case.seg))
    original = np.asarray(seg_img.dataobj)
    labels, affine = label_to_original(out["label"], out["meta"])
    assert labels.shape == original.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(affine, seg_img.affine)
    back = to_convention(labels, case.convention)
    et = 4 if case.convention == "2021" else 3
    assert set(np.unique(back)) <= set(case.labels)
    got, want = _regions(back, et), _regions(original, et)
    for region in ("ET", "TC", "WT"):
        assert _dice(got[region], want[region]) >= 0.95, (case_id, region)


def test_write_prediction_lands_on_the_source_grid_in_its_convention(real_prepared, tmp_path):
    from seg.data.inverse import write_prediction

    case, out = real_prepared["BraTS2021_90001"]
    path = write_prediction(tmp_path / "BraTS2021_90001_pred.nii.gz", out["label"], out["meta"])
    pred, src = nib.load(str(path)), nib.load(str(case.images[0]))
    assert pred.shape == src.shape
    np.testing.assert_array_equal(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) == {0, 1, 2, 4}


def test_a_small_enhancing_tumour_is_written_as_core_on_request(real_prepared, tmp_path):
    from seg.data.inverse import write_prediction

    case, out = real_prepared["BraTS2021_90001"]
    plain = np.asarray(nib.load(str(write_prediction(tmp_path / "a.nii.gz", out["label"], out["meta"])))
                       .dataobj)
    et_mm3 = int((plain == 4).sum())  # 1 mm voxels on this case's grid
    assert et_mm3 > 0
    kept = write_prediction(tmp_path / "b.nii.gz", out["label"], out["meta"], min_et_mm3=et_mm3)
    np.testing.assert_array_equal(np.asarray(nib.load(str(kept)).dataobj), plain)  # not smaller: kept
    info: dict = {}
    moved = np.asarray(nib.load(str(write_prediction(tmp_path / "c.nii.gz", out["label"], out["meta"],
                                                      min_et_mm3=et_mm3 + 1, info=info))).dataobj)
    assert info == {"et_to_core_voxels": et_mm3}
    assert not (moved == 4).any() and ((moved == 1) == np.isin(plain, [1, 4])).all()  # TC unchanged
    assert ((moved == 2) == (plain == 2)).all()


def test_inverse_through_oblique_native_grid(shared_data, tmp_path):
    """Native t1/t1ce share one oblique LAS 0.9x0.9x5.5 mm grid: a case built from them goes
    through real reorientation and resampling, and a label drawn on that grid comes back."""
    native = shared_data / "native"
    for slot, src in (("t1", "t1"), ("t1ce", "t1ce"), ("t2", "t1"), ("flair", "t1ce")):
        (tmp_path / f"N_{slot}.nii.gz").symlink_to(native / f"TCGA-FG-6692_{src}_native.nii.gz")
    ref = nib.load(str(native / "TCGA-FG-6692_t1_native.nii.gz"))
    zooms = np.array(ref.header.get_zooms()[:3])
    idx = np.indices(ref.shape).astype(np.float32)
    centre = np.array(ref.shape) / 2
    r_mm = np.sqrt(sum(((idx[i] - centre[i]) * zooms[i]) ** 2 for i in range(3)))
    seg = np.zeros(ref.shape, np.uint8)
    seg[r_mm < 40], seg[r_mm < 25], seg[r_mm < 14] = 2, 4, 1
    nib.save(nib.Nifti1Image(seg, ref.affine), str(tmp_path / "N_seg.nii.gz"))

    (case,) = discover(tmp_path)
    out = prepare_case(case, PrepConfig(size=96))
    meta = out["meta"]
    assert meta["resampled_shape"] != meta["original_shape"]  # 5.5 mm slices became 1 mm
    labels, affine = label_to_original(out["label"], meta)
    np.testing.assert_allclose(affine, ref.affine)
    got, want = _regions(to_convention(labels, "2021"), 4), _regions(seg, 4)
    for region in ("ET", "TC", "WT"):
        assert _dice(got[region], want[region]) >= 0.95, region


def test_a_sform_whose_voxel_sizes_disagree_with_pixdim_comes_back_on_the_file_s_grid(tmp_path):
    """A tool rewrote the sform (0.9 x 0.9 x 5.5 mm) and left pixdim at 1: prep resamples on the
    file's affine (nibabel's; MONAI's reader would swap in the qform) and the label comes back on it,
    whether prep read the files or validation's images."""
    from seg.data.cases import read_validated
    from seg.data.synth import synth_case

    images, seg = synth_case(3, 0, (40, 44, 24))
    affine = np.diag([-0.9, -0.9, 5.5, 1.0])
    affine[1, 3] = 40
    for slot, data in (*zip(("t1", "t1ce", "t2", "flair"), images, strict=True), ("seg", seg)):
        img = nib.Nifti1Image(data, np.eye(4))
        img.set_sform(affine, code=1)
        nib.save(img, str(tmp_path / f"BraTS2021_00042_{slot}.nii.gz"))
    (case,) = discover(tmp_path)
    for given in (None, read_validated(case)[1]):
        out = prepare_case(case, PrepConfig(size=32), given)
        np.testing.assert_allclose(out["meta"]["original_affine"], affine, atol=1e-6)
        labels, back = label_to_original(out["label"], out["meta"])
        np.testing.assert_allclose(back, affine, atol=1e-6)
        got, want = _regions(to_convention(labels, "2021"), 4), _regions(seg, 4)
        assert _dice(got["WT"], want["WT"]) >= 0.95


@pytest.mark.parametrize("perm, flips, shift", [
    ((0, 1, 2), (-1, -1, 1), (4, 5, 0)),  # BraTS: x and y flipped
    ((1, 0, 2), (1, -1, -1), (0, 7, 9)),  # axes swapped too
    ((2, 0, 1), (1, 1, 1), (-3, 2, 4)),  # shifted: part of the destination lies outside the source
])
def test_the_exact_voxel_resample_equals_monai_s_nearest_resample(perm, flips, shift):
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    from seg.data.inverse import _gather, _voxel_map

    src = np.random.default_rng(0).integers(0, 4, (6, 7, 8)).astype(np.uint8)
    src_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    src_affine[:3, 3] = (-10.0, 3.0, 5.0)
    m = np.zeros((4, 4))
    for a, (j, sign) in enumerate(zip(perm, flips, strict=True)):  # src axis a follows dst axis j
        m[a, j] = sign
    m[:3, 3], m[3, 3] = shift, 1.0
    dst_affine = src_affine @ m
    dst_shape = tuple(int(n) for n in np.array(src.shape)[np.argsort(perm)])
    mapping = _voxel_map(src_affine, dst_affine)
    assert mapping is not None
    ours = _gather(src, *mapping, dst_shape)
    monai = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float64)(
        MetaTensor(torch.from_numpy(src).float()[None], affine=torch.from_numpy(src_affine)),
        dst_affine=torch.from_numpy(dst_affine), spatial_size=dst_shape)
    expected = np.rint(monai.as_tensor()[0].numpy()).astype(np.uint8)
    assert ours.dtype == np.uint8 and np.array_equal(ours, expected)
    oblique = dst_affine.copy()
    oblique[:3, :3] = oblique[:3, :3] @ np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    assert _voxel_map(src_affine, oblique) is None  # the general resample's case


def test_first_argmax_keeps_torch_argmax_s_first_maximum_on_ties():
    import torch

    from seg.data.inverse import _first_argmax

    x = torch.tensor([[0.5, 0.25, 0.0], [0.5, 0.25, 0.5], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]]).view(4, 3, 1, 1)
    assert torch.equal(_first_argmax(x), torch.argmax(x, 0))
    ties = torch.randint(0, 3, (4, 5, 6, 7), generator=torch.Generator().manual_seed(0)) / 2.0
    assert torch.equal(_first_argmax(ties), torch.argmax(ties, 0))
