"""seg.data.cases: discovery of both BraTS namings and validation of every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from seg.data.cases import discover, unmatched_nifti, validate


def test_discovers_both_namings_on_the_real_data(shared_data):
    cases = {c.id: c for c in discover(shared_data)}
    # native scans (TCGA-..._t1_native) and the prediction file are not cases
    assert sorted(cases) == ["BraTS-GLI-00001-000", "BraTS-GLI-90003-000",
                             "BraTS2021_90001", "BraTS2021_90002"]

    c21 = cases["BraTS2021_90001"]
    assert c21.convention == "2021" and c21.labels == (0, 1, 2, 4)
    names = [f"BraTS2021_90001_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    assert [p.name for p in c21.images] == names
    assert c21.seg.name == "BraTS2021_90001_seg.nii.gz"

    c23 = cases["BraTS-GLI-90003-000"]
    assert c23.convention == "2023" and c23.labels == (0, 1, 2, 3)
    # channel order t1, t1ce, t2, flair = t1n, t1c, t2w, t2f
    suffixes = [p.name.split("-")[-1] for p in c23.images]
    assert suffixes == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"]
    assert c23.seg.name == "BraTS-GLI-90003-000-seg.nii.gz"

    assert cases["BraTS-GLI-00001-000"].seg is None  # image-only case
    # what discover leaves out is named (data prep prints it)
    ignored = {p.name for p in unmatched_nifti(shared_data)}
    assert "BraTS2021_90001_pred-yixinmpl20.nii.gz" in ignored and "TCGA-FG-6692_t1_native.nii.gz" in ignored
    assert not ignored & {p.name for c in cases.values() for p in (*c.images, c.seg) if p is not None}


def test_real_cases_validate_clean(shared_data):
    for case in discover(shared_data):
        assert validate(case) == [], case.id


def test_each_bad_input_gets_a_clear_message_naming_its_file(bad_src):
    root, expect = bad_src
    cases = {c.id: c for c in discover(root)}
    assert set(expect) <= set(cases)
    for cid, (file_name, words) in expect.items():
        errors = validate(cases[cid])
        assert errors, f"{cid} should fail validation"
        assert any(file_name in e and words in e for e in errors), (cid, errors)


def test_grid_mismatch_names_every_offending_modality(bad_src):
    root, _ = bad_src
    case = next(c for c in discover(root) if c.id == "BraTS2021_10004")
    errors = validate(case)
    # native t2 and flair each have their own grid; t1ce shares t1's
    assert len(errors) == 2
    assert any("_t2.nii.gz: grid (224, 256, 26) differs" in e for e in errors)
    assert any("_flair.nii.gz: grid (208, 256, 26) differs" in e for e in errors)


def test_grid_mismatch_names_the_odd_modality_even_when_it_is_t1(synth_small, tmp_path):
    import nibabel as nib

    case = discover(synth_small)[0]
    for path in case.files:
        (tmp_path / path.name).symlink_to(path)
    t1 = nib.load(str(case.images[0]))
    odd = tmp_path / case.images[0].name
    odd.unlink()
    nib.save(nib.Nifti1Image(np.asanyarray(t1.dataobj)[:, :, :-2], t1.affine), str(odd))
    errors = validate(discover(tmp_path)[0])
    assert len(errors) == 1 and errors[0].startswith(f"{odd}: grid"), errors


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_missing_modality_is_reported_with_its_expected_path(tmp_path, ext):
    for m in ("t1", "t2", "flair", "seg"):
        (tmp_path / f"BraTS2021_00042_{m}{ext}").write_bytes(b"")
    (case,) = discover(tmp_path)
    assert case.images[1] == tmp_path / f"BraTS2021_00042_t1ce{ext}"
    assert f"BraTS2021_00042_t1ce{ext}: missing file" in "\n".join(validate(case))


def test_an_upper_case_extension_is_named_as_ignored_not_dropped(tmp_path):
    from seg.data.cases import unmatched_nifti

    for m in ("t1", "t1ce", "t2", "flair"):
        (tmp_path / f"BraTS2021_00042_{m}.NII.GZ").write_bytes(b"")
    assert discover(tmp_path) == []
    assert len(unmatched_nifti(tmp_path)) == 4


def test_inference_ignores_a_second_copy_of_the_seg_it_never_reads(tmp_path):
    for m in ("t1", "t1ce", "t2", "flair", "seg"):
        (tmp_path / f"BraTS2021_00042_{m}.nii.gz").write_bytes(b"")
    (tmp_path / "BraTS2021_00042_seg.nii").write_bytes(b"")
    (tmp_path / "BraTS2021_00042_t2.nii").write_bytes(b"")
    (case,) = discover(tmp_path)
    assert sorted(p.name for p in case.duplicates) == ["BraTS2021_00042_seg.nii", "BraTS2021_00042_t2.nii"]
    images = case.images_only()
    assert images.seg is None and [p.name for p in images.duplicates] == ["BraTS2021_00042_t2.nii"]


def _case_with_seg(folder, seg: np.ndarray):
    import nibabel as nib

    rng = np.random.default_rng(0)
    for m in ("t1", "t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image(rng.random((8, 8, 8)).astype(np.float32) + 1, np.eye(4)),
                 folder / f"BraTS2021_00001_{m}.nii.gz")
    nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / "BraTS2021_00001_seg.nii.gz")
    (case,) = discover(folder)
    return case


@pytest.mark.parametrize("value, says", [(1.5, "non-integer label values"), (-252, "label values [-252]")])
def test_a_seg_a_uint8_cast_would_corrupt_is_refused(tmp_path, value, says):
    # 1.5 would become label 1, -252 label 4 (and -1 read as 255): each named as it is
    seg = np.zeros((8, 8, 8), np.float32 if value % 1 else np.int16)
    seg[2:4, 2:4, 2:4] = value
    assert any(says in e for e in validate(_case_with_seg(tmp_path, seg)))
