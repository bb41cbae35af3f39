"""`segbench eval` (seg.commands.evaluate): matching predictions to references, the JSON document,
missing and image-only cases, workers, and the grid the distances are measured on."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from seg import metrics
from seg.commands.evaluate import case_id
from segbench.cli import main


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
    captured = capsys.readouterr()
    assert "caseC" in captured.err
    # the printed table adds the leaderboard's mean sensitivity and specificity per region
    rates = "| sensitivity | 0.5000 | 0.5000 | 0.5000 |\n| specificity | 1.0000 | 1.0000 | 1.0000 |"
    assert rates in captured.out
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
