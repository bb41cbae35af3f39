"""BraTS metrics: hand-computed cases, conventions, the real pair, and the `segbench eval` CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from seg import metrics
from seg.commands.evaluate import case_id
from segbench.cli import main


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


def test_case_id():
    assert case_id("a/BraTS2021_90001_pred-yixinmpl20.nii.gz") == "BraTS2021_90001"
    assert case_id("BraTS2021_90001_seg.nii.gz") == "BraTS2021_90001"
    assert case_id("BraTS-GLI-90003-000-seg.nii.gz") == "BraTS-GLI-90003-000"
    assert case_id("out/BraTS-GLI-90003-000_pred.nii") == "BraTS-GLI-90003-000"


def _save(path, data, affine=None, zooms=(1.0, 1.0, 1.0)):
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    img.header.set_zooms(zooms)
    nib.save(img, str(path))


def _folders(tmp_path):
    """Empty reference and prediction folders."""
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    return tmp_path / "ref", tmp_path / "pred"


def test_eval_cli_json(tmp_path, capsys):
    ref_dir, pred_dir = _folders(tmp_path)
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 2
    ref[3:5, 3:5, 3:5] = 3  # 2023 labels: --labels auto detects them
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    _save(ref_dir / "caseA-seg.nii.gz", ref, affine, (1, 1, 2))
    _save(pred_dir / "caseA_pred.nii.gz", ref, affine, (1, 1, 2))
    _save(ref_dir / "caseB-seg.nii.gz", ref, affine, (1, 1, 2))
    _save(pred_dir / "caseB_pred.nii.gz", np.zeros_like(ref), affine, (1, 1, 2))
    _save(pred_dir / "caseC_pred.nii.gz", np.zeros((5, 5, 5), np.uint8))  # no reference
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "caseA").symlink_to(ref_dir)  # a symlinked case folder is searched too
    assert main(["eval", "--pred", str(pred_dir / "caseA_pred.nii.gz"), "--ref", str(linked)]) == 1
    assert json.loads(capsys.readouterr().out)["cases"]["caseA"]["ET"]["dice"] == 1.0
    out = tmp_path / "r" / "eval.json"
    assert main(["eval", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]) == 1
    assert "caseC" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert set(doc["cases"]) == {"caseA", "caseB"}
    for case in doc["cases"].values():
        assert set(case) == {"ET", "TC", "WT"}
        assert all(
            set(v) == set(metrics.METRICS) and all(isinstance(x, float) for x in v.values())
            for v in case.values()
        )
    assert doc["cases"]["caseA"]["ET"] == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}
    assert doc["cases"]["caseB"]["WT"] == {"dice": 0.0, "hd95": 373.13, "sensitivity": 0.0,
                                           "specificity": 1.0}  # an empty prediction misses all of it
    assert doc["mean"]["TC"] == {"dice": 0.5, "hd95": pytest.approx(373.13 / 2), "sensitivity": 0.5,
                                 "specificity": 1.0}
    assert doc["labels"] == {"caseA": "2023", "caseB": "2023"}
    # Single files print the JSON; 2023 labels forced through --labels 2021 are an error naming the file.
    assert (
        main(
            [
                "eval",
                "--pred",
                str(pred_dir / "caseA_pred.nii.gz"),
                "--ref",
                str(ref_dir / "caseA-seg.nii.gz"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["cases"]["caseA"]["WT"]["dice"] == 1.0
    args = ["eval", "--pred", str(pred_dir / "caseA_pred.nii.gz"), "--ref", str(ref_dir / "caseA-seg.nii.gz")]
    assert main([*args, "--labels", "2021"]) == 1
    assert "caseA_pred.nii.gz: label values [3] are outside the 2021" in capsys.readouterr().err
    # a 2021 map (ET = 4) against a 2023 one: both files and their labels named
    mixed = ref.copy()
    mixed[mixed == 3] = 4
    _save(pred_dir / "caseA_pred.nii.gz", mixed, affine, (1, 1, 2))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "caseA_pred.nii.gz (labels [0, 2, 4]) and its reference" in err
    assert "caseA-seg.nii.gz (labels [0, 2, 3]) mix the 2021 (ET = 4) and 2023 (ET = 3)" in err


def test_eval_skips_predictions_of_image_only_cases_and_never_reads_images_as_labels(tmp_path, capsys):
    ref_dir, pred_dir = tmp_path / "raw", tmp_path / "pred"
    labelled, image_only = ref_dir / "BraTS-GLI-00002-000", ref_dir / "BraTS-GLI-00001-000"
    for folder in (labelled, image_only, pred_dir):
        folder.mkdir(parents=True)
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 2
    image = np.full((10, 10, 10), 300, np.int16)  # an image's values would read as labels
    for sfx in ("t1n", "t1c", "t2w", "t2f"):
        _save(labelled / f"BraTS-GLI-00002-000-{sfx}.nii.gz", image)
        _save(image_only / f"BraTS-GLI-00001-000-{sfx}.nii.gz", image)
    _save(labelled / "BraTS-GLI-00002-000-seg.nii.gz", ref)
    _save(pred_dir / "BraTS-GLI-00002-000_pred.nii.gz", ref)
    _save(pred_dir / "BraTS-GLI-00001-000_pred.nii.gz", ref)  # infer predicts image-only cases too
    out = tmp_path / "eval.json"
    assert main(["eval", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 image-only case(s)" in err and "no reference" not in err
    doc = json.loads(out.read_text())
    assert set(doc["cases"]) == {"BraTS-GLI-00002-000"} and set(doc["skipped"]) == {"BraTS-GLI-00001-000"}
    # the image-only case alone: skipped, its images never taken for label maps; nothing scored is exit 1
    pred = str(pred_dir / "BraTS-GLI-00001-000_pred.nii.gz")
    assert main(["eval", "--pred", pred, "--ref", str(image_only), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "skipped 1 image-only case(s)" in err and "t1c" not in err
    # one prediction file against a folder holding one other case's seg: not paired with that case
    assert main(["eval", "--pred", pred, "--ref", str(ref_dir), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "skipped 1 image-only case(s)" in err and "no prediction for case BraTS-GLI-00002-000" in err
    # predictions written beside the raw cases: the _pred files are scored, not the seg files themselves
    _save(labelled / "BraTS-GLI-00002-000_pred.nii.gz", np.zeros_like(ref))
    assert main(["eval", "--pred", str(ref_dir), "--ref", str(ref_dir), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["cases"]["BraTS-GLI-00002-000"]["WT"]["dice"] == 0.0
    # an image-only folder (a validation set) with predictions beside it: nothing to score them against
    _save(image_only / "BraTS-GLI-00001-000_pred.nii.gz", ref)
    assert main(["eval", "--pred", str(image_only), "--ref", str(image_only), "--out", str(out)]) == 1
    assert "skipped 1 image-only case(s)" in capsys.readouterr().err


def test_eval_counts_voxels_and_both_empty_regions_and_scores_missing_cases_on_request(tmp_path, capsys):
    ref_dir, pred_dir = _folders(tmp_path)
    no_et = np.zeros((10, 10, 10), np.uint8)
    no_et[2:6, 2:6, 2:6] = 2
    no_et[3:5, 3:5, 3:5] = 1  # 2021 labels, no enhancing tumour
    with_et = no_et.copy()
    with_et[4, 4, 4] = 4
    _save(ref_dir / "caseA_seg.nii.gz", no_et)
    _save(pred_dir / "caseA_pred.nii.gz", no_et)
    _save(ref_dir / "caseB_seg.nii.gz", with_et)
    _save(pred_dir / "caseB_pred.nii.gz", with_et)
    _save(ref_dir / "caseC_seg.nii.gz", with_et)  # no prediction
    out = tmp_path / "eval.json"
    assert main(["eval", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]) == 1
    assert "no prediction for case caseC" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["n_cases"] == 2 and doc["mean"]["ET"]["dice"] == 1.0
    assert doc["voxels"]["caseA"]["ET"] == {"pred": 0, "ref": 0}
    assert doc["voxels"]["caseB"] == {"ET": {"pred": 1, "ref": 1}, "TC": {"pred": 8, "ref": 8},
                                      "WT": {"pred": 64, "ref": 64}}
    assert doc["both_empty"] == {"ET": 1, "TC": 0, "WT": 0}
    assert any("mean is over 2 case(s); 1 without a prediction" in n for n in doc["notes"])
    assert any("empty in both" in n and "ET 1" in n for n in doc["notes"])
    # --missing empty: the missing case is scored as an all-background prediction, in the mean
    assert main(["eval", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out),
                 "--missing", "empty"]) == 0
    doc = json.loads(out.read_text())
    assert doc["n_cases"] == 3 and doc["scored_empty"] == ["caseC"] and not doc["errors"]
    assert doc["cases"]["caseC"]["ET"] == {"dice": 0.0, "hd95": 373.13, "sensitivity": 0.0,
                                           "specificity": 1.0}
    assert doc["voxels"]["caseC"]["WT"] == {"pred": 0, "ref": 64}
    assert doc["mean"]["WT"]["dice"] == pytest.approx(2 / 3)


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


def test_eval_workers_give_the_same_document(tmp_path):
    from seg.commands.evaluate import evaluate_paths

    ref_dir, pred_dir = _folders(tmp_path)
    rng = np.random.default_rng(0)
    for i in range(3):
        ref = np.zeros((12, 12, 12), np.uint8)
        ref[2:8, 2:8, 2:8] = 2
        ref[3 + i:6, 3:6, 3:6] = 4
        _save(ref_dir / f"case{i}_seg.nii.gz", ref)
        pred = np.where(rng.random(ref.shape) < 0.1, 0, ref).astype(np.uint8)
        _save(pred_dir / f"case{i}_pred.nii.gz", pred)
    _save(pred_dir / "case9_pred.nii.gz", np.full((12, 12, 12), 7, np.uint8))  # a bad case: one line
    _save(ref_dir / "case9_seg.nii.gz", np.zeros((12, 12, 12), np.uint8))
    one, errors_one = evaluate_paths(pred_dir, ref_dir)
    two, errors_two = evaluate_paths(pred_dir, ref_dir, workers=2)
    assert one == two and errors_one == errors_two
    assert len(one["cases"]) == 3 and len(errors_one) == 1 and "case9_pred.nii.gz" in errors_one[0]


def test_eval_workers_report_a_dead_worker_as_lines():
    import os

    from seg.commands.evaluate import _scored_all

    results = dict(_scored_all([("a", 1, "a.nii.gz"), ("b", 1, "b.nii.gz")], workers=2, score=os._exit))
    assert set(results) == {"a", "b"}
    assert results["a"].startswith("a.nii.gz: not scored, a worker process died")
    assert results["b"].startswith("b.nii.gz: not scored, a worker process died")


def test_prediction_folders_take_infer_files_first_and_other_named_predictions_for_the_rest(tmp_path):
    from seg.commands.evaluate import label_files

    ref = np.zeros((6, 6, 6), np.uint8)
    for name in ("caseA_pred", "caseA_pred-other", "caseB_pred-model", "caseC_seg"):
        _save(tmp_path / f"{name}.nii.gz", ref)
    found = {cid: p.name for cid, p in label_files(tmp_path, predictions=True).items()}
    # infer's caseA file wins over another model's; caseB has another model's only; a seg is no prediction
    assert found == {"caseA": "caseA_pred.nii.gz", "caseB": "caseB_pred-model.nii.gz"}


def test_hd95_takes_the_voxel_size_from_the_affine_not_a_disagreeing_pixdim(tmp_path):
    """A header whose sform says 0.9 x 0.9 x 5.5 mm and whose pixdim was left at 1: distances on the
    affine's grid, the one the grid check and prep use."""
    from seg.commands.evaluate import evaluate_pair

    ref = np.zeros((12, 12, 12), np.uint8)
    ref[3:8, 3:8, 3:8] = 2
    pred = np.roll(ref, 2, axis=2)  # two slices over: 11 mm on the affine's grid, 2 "mm" by pixdim
    affine = np.diag([0.9, 0.9, 5.5, 1.0])
    for name, data in (("ref", ref), ("pred", pred)):
        img = nib.Nifti1Image(data, affine)
        img.header.set_qform(None, code=0)
        img.header["pixdim"][1:4] = 1.0
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
    assert nib.load(str(tmp_path / "ref.nii.gz")).header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    wt = evaluate_pair(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz")["regions"]["WT"]
    assert wt["hd95"] == pytest.approx(11.0, abs=0.01)
