"""k-fold cross-validation: tiny models and data, 2 folds × 1 short epoch, ensemble on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_loaders import phantom

from seg import metrics
from seg.cv import fold_count, prepared_spacing_mm
from seg.data.splits import load_splits, write_splits
from seg.data.store import load_case, save_case, write_json
from seg.infer import load_model, read_checkpoint, sliding_window_predict
from segbench.cli import main

SIZE = 16


def _meta(case_id: str, crop_extent: tuple[int, int, int]) -> dict:
    """The crop-box part of a prepared case's meta (what prepared-space HD95 needs)."""
    start = [5, 7, 0]
    end = [s + e for s, e in zip(start, crop_extent, strict=True)]
    return {"id": case_id, "crop_start": start, "crop_end": end, "size": SIZE, "config": {"spacing_mm": 1.0}}


def _flat(regions: dict) -> dict:
    return {(r, m): v for r, d in regions.items() for m, v in d.items()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(1)
    ids = [f"Case_{i:03d}" for i in range(6)]
    for case_id in ids:
        image, label = phantom(SIZE, rng)
        save_case(root / f"{case_id}.pt", image, label, _meta(case_id, (160, 192, 144)))
    write_json(
        root / "manifest.json",
        {
            "config": {"size": SIZE, "format": "pt32"},
            "cases": [{"id": i, "status": "ok", "file": f"{i}.pt"} for i in ids],
        },
    )
    write_splits(root, ids=ids, folds=2)
    return root


def test_prepared_spacing_from_crop_box():
    assert prepared_spacing_mm(_meta("x", (160, 192, 144))) == (10.0, 12.0, 9.0)


def test_fold_count_checks(data_dir, tmp_path):
    assert fold_count(data_dir, None)[0] == 2
    with pytest.raises(ValueError, match="defines 2 folds; cross-validation needs 2..2, got 3"):
        fold_count(data_dir, 3)
    with pytest.raises(FileNotFoundError, match="splits.json: not found"):
        fold_count(tmp_path, 2)


def test_cv_trains_folds_and_scores_the_ensemble(data_dir, tmp_path, capsys):
    run = tmp_path / "cv"
    args = [
        "cv",
        "--data",
        str(data_dir),
        "--model",
        "unet",
        "--out",
        str(run),
        "--folds",
        "2",
        "--model-option",
        "channels=(8,16,32)",
        "--model-option",
        "strides=(2,2)",
        "--model-option",
        "num_res_units=1",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--lr",
        "0.01",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--warmup-epochs",
        "0",
        "--roi",
        "16",
    ]
    assert main(args) == 0
    doc = json.loads((run / "cv.json").read_text())
    splits = load_splits(data_dir)
    assert doc["folds"] == 2 and doc["test"]["ids"] == splits["test"] and len(splits["test"]) == 1
    assert [t["fold"] for t in doc["train"]] == [0, 1]
    for fold in (0, 1):
        assert (run / f"fold{fold}" / "best.pt").is_file() and (run / f"fold{fold}" / "log.csv").is_file()
        assert read_checkpoint(run / f"fold{fold}" / "best.pt")["config"]["fold"] == fold

    # Recompute the test scores from the checkpoints: each fold alone, and the mean of their probabilities.
    models = [load_model(run / f"fold{k}" / "best.pt") for k in (0, 1)]
    case_id = splits["test"][0]
    case = load_case(data_dir / f"{case_id}.pt")
    probs = [sliding_window_predict(m, case["image"][None], 16, precision="fp32") for m in models]
    ref = case["label"][0].numpy()
    spacing = (10.0, 12.0, 9.0)
    for k in (0, 1):
        expected = metrics.evaluate_case(probs[k].argmax(1)[0].numpy(), ref, spacing, "prepared")
        assert _flat(doc["test"]["folds"][k]["cases"][case_id]) == pytest.approx(_flat(expected))
    ensemble = metrics.evaluate_case(
        ((probs[0] + probs[1]) / 2).argmax(1)[0].numpy(), ref, spacing, "prepared"
    )
    assert _flat(doc["test"]["ensemble"]["cases"][case_id]) == pytest.approx(_flat(ensemble))
    assert _flat(doc["test"]["ensemble"]["mean"]) == pytest.approx(_flat(ensemble))

    table = (run / "cv.md").read_text()
    assert "| fold 0 |" in table and "| fold 1 |" in table and "| ensemble |" in table
    assert f"{ensemble['WT']['dice']:.4f}" in table
    assert "Test scores are on the prepared grid" in table

    # A rerun resumes: both folds are finished, nothing retrains, the same checkpoints score the same.
    stamp = (run / "fold0" / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert (run / "fold0" / "best.pt").stat().st_mtime_ns == stamp
    assert json.loads((run / "cv.json").read_text())["test"] == doc["test"]
    assert all(t["start_epoch"] == 1 for t in json.loads((run / "cv.json").read_text())["train"])

    # The test split of a packed folder scores the same; a test case that cannot be read is named and
    # left out, the others still scored.
    from seg.cv import evaluate_test
    from seg.data.mmap_store import pack
    from seg.infer import InferConfig

    packed = tmp_path / "packed"
    pack(data_dir, packed, progress=False)
    ckpts = [run / f"fold{k}" / "best.pt" for k in (0, 1)]
    scored = evaluate_test(ckpts, packed, [case_id, "Case_404"], InferConfig(roi=16, precision="fp32"), "cpu")
    assert _flat(scored["ensemble"]["cases"][case_id]) == pytest.approx(_flat(ensemble))
    assert len(scored["errors"]) == 1 and "Case_404" in scored["errors"][0]

    # With a volume threshold above the ensemble's predicted ET, the ET scores are those of a map
    # whose ET became core (seg.postprocess), the other regions' scores unchanged.
    from seg.postprocess import small_et_to_core

    mean = ((probs[0] + probs[1]) / 2).argmax(1)[0].numpy()
    voxel_mm3, et_voxels = 10.0 * 12.0 * 9.0, int((mean == 3).sum())
    assert et_voxels > 0, "the check needs a predicted ET"
    cfg = InferConfig(roi=16, precision="fp32", min_et_mm3=(et_voxels + 1) * voxel_mm3)
    cut = evaluate_test(ckpts, packed, [case_id], cfg, "cpu")["ensemble"]["cases"][case_id]
    moved, count = small_et_to_core(mean, voxel_mm3, float("inf"))
    assert count == et_voxels
    assert _flat(cut) == pytest.approx(_flat(metrics.evaluate_case(moved, ref, spacing, "prepared")))
    assert cut["TC"] == ensemble["TC"] and cut["WT"] == ensemble["WT"]
    # each fold's row is post-processed alike (else fold and ensemble rows would not compare)
    every = InferConfig(roi=16, precision="fp32", min_et_mm3=1e12)  # any predicted ET becomes core
    folds_cut = evaluate_test(ckpts, packed, [case_id], every, "cpu")["folds"]
    for k in (0, 1):
        fold_pred = probs[k].argmax(1)[0].numpy()
        assert (fold_pred == 3).any(), "the check needs each fold to predict some ET"
        moved_k, _ = small_et_to_core(fold_pred, voxel_mm3, every.min_et_mm3)
        expected_k = metrics.evaluate_case(moved_k, ref, spacing, "prepared")
        assert _flat(folds_cut[k]["cases"][case_id]) == pytest.approx(_flat(expected_k))

    # --tune-min-et: the volume chosen on the folds' out-of-fold validation cases, recomputed here from
    # each fold's model on its own validation split; the test split is then scored with it.
    from seg.postprocess import MIN_ET_CANDIDATES_MM3, choose_min_et, et_dice_by_threshold

    rows = []
    for k in (0, 1):
        for val_id in splits["folds"][k]["val"]:
            val = load_case(data_dir / f"{val_id}.pt")
            val_probs = sliding_window_predict(models[k], val["image"][None], 16, precision="fp32")
            rows.append(et_dice_by_threshold(val_probs.argmax(1)[0].numpy(), val["label"][0].numpy(),
                                             float(np.prod(prepared_spacing_mm(val["meta"])))))
    expected_choice = choose_min_et(rows)
    capsys.readouterr()
    assert main([*args, "--tune-min-et"]) == 0
    tuned = json.loads((run / "cv.json").read_text())
    assert tuned["postprocess"]["min_et_mm3"] == expected_choice["min_et_mm3"]
    assert tuned["postprocess"]["mean_et_dice"] == pytest.approx(expected_choice["mean_et_dice"])
    assert tuned["postprocess"]["candidates_mm3"] == list(MIN_ET_CANDIDATES_MM3)
    assert tuned["postprocess"]["cases"] == sum(len(f["val"]) for f in splits["folds"][:2])
    assert tuned["infer"]["min_et_mm3"] == expected_choice["min_et_mm3"]
    assert "Post-processing tuned on 5 out-of-fold validation case(s)" in (run / "cv.md").read_text()
    ens = tuned["test"]["ensemble"]["mean"]
    assert f"| sensitivity | {ens['ET']['sensitivity']:.4f} | {ens['TC']['sensitivity']:.4f} |" in \
        (run / "cv.md").read_text()

    # a table without a scored test case says so instead of failing
    from seg.cv import markdown_table

    empty = {**tuned, "test": {**tuned["test"], "ensemble": {"mean": {}, "cases": {}},
                               "folds": [{"mean": {}}, {"mean": {}}], "errors": ["Case_1: unreadable"]}}
    assert "| ensemble | — | — |" in markdown_table(empty) and "1 test case(s) could not be scored" in \
        markdown_table(empty)

    # splits.json re-made since the folds trained (other cases in fold 0): the resume is refused, not
    # scored as if fold 0's new test cases had been held out
    original = (data_dir / "splits.json").read_text()
    try:
        assert main(["data", "splits", str(data_dir), "--seed", "3"]) == 0
        capsys.readouterr()
        assert main(args) != 0
        assert "trained on other cases than" in capsys.readouterr().err
    finally:
        (data_dir / "splits.json").write_text(original)

    # A rerun without --epochs or the model options (to rescore, e.g. with --tta) keeps each fold's own
    # settings: nothing retrains (it went on to the default 100 epochs, and failed without the options).
    given = {"--epochs": "1", "--model-option": None}
    bare, skip = [], 0
    for arg in args:
        if skip:
            skip -= 1
            continue
        if arg in given:
            skip = 1
            continue
        bare.append(arg)
    assert "--epochs" not in bare and "--model-option" not in bare
    stamp = (run / "fold1" / "last.pt").stat().st_mtime_ns
    assert main([*bare, "--tta"]) == 0
    rescored = json.loads((run / "cv.json").read_text())
    assert (run / "fold1" / "last.pt").stat().st_mtime_ns == stamp
    assert all(t["epochs"] == 1 and t["start_epoch"] == 1 for t in rescored["train"])
    assert rescored["model_options"]["channels"] in ([8, 16, 32], (8, 16, 32)) and rescored["infer"]["tta"]
    # the folds' spread beside their rows
    spread = rescored["test"]["folds_mean_sd"]
    wt = [f["mean"]["WT"]["dice"] for f in rescored["test"]["folds"]]
    assert spread["WT"]["dice"]["mean"] == pytest.approx(np.mean(wt))
    assert spread["WT"]["dice"]["sd"] == pytest.approx(np.std(wt, ddof=1))
    assert "| folds mean ± sd | — |" in (run / "cv.md").read_text()
    # a flag given again on a rerun wins over the folds' stored setting: --epochs 2 trains one more
    assert main([*bare, "--epochs", "2"]) == 0
    assert all(t["epochs"] == 2 for t in json.loads((run / "cv.json").read_text())["train"])


def test_cv_goes_on_past_a_failed_fold_and_refuses_what_cannot_be_scored_before_training(data_dir, tmp_path,
                                                                                        capsys, monkeypatch):
    import shutil

    import seg.train
    from seg.cv import evaluate_test
    from seg.infer import InferConfig

    args = ["cv", "--data", str(data_dir), "--out", str(tmp_path / "cv"), "--device", "cpu", "--epochs", "1",
            "--batch-size", "2", "--precision", "fp32", "--warmup-epochs", "0", "--roi", "16",
            "--model-option", "channels=(8,16)", "--model-option", "strides=(2,)"]
    real = seg.train.train

    def fold0_fails(cfg):
        if cfg.fold == 0:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(cfg)

    monkeypatch.setattr(seg.train, "train", fold0_fails)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "fold 0 failed: RuntimeError: CUDA out of memory (simulated)" in err
    doc = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert [t["fold"] for t in doc["train"]] == [1] and doc["failed"][0]["fold"] == 0
    assert len(doc["test"]["folds"]) == 1 and doc["test"]["ensemble"]["mean"]
    assert "| fold 0 | failed |" in (tmp_path / "cv" / "cv.md").read_text()
    # a bare rerun: fold 0, never started, trains with the run's settings (fold 1's), not the defaults
    seen = []
    monkeypatch.setattr(seg.train, "train", lambda cfg: seen.append(cfg) or real(cfg))
    assert main(["cv", "--data", str(data_dir), "--out", str(tmp_path / "cv"), "--device", "cpu",
                 "--roi", "16"]) == 0
    assert [(c.fold, c.model, list(c.model_options["channels"]), c.epochs, c.precision) for c in seen] == [
        (0, "unet", [8, 16], 1, "fp32"), (1, "unet", [8, 16], 1, "fp32")]
    monkeypatch.setattr(seg.train, "train", real)
    config = tmp_path / "cv" / "fold1" / "config.json"
    stored = json.loads(config.read_text())
    stored["config"]["model_options"]["channels"] = [4, 8]  # folds of two models: one ensemble cannot
    config.write_text(json.dumps(stored))
    assert main(["cv", "--data", str(data_dir), "--out", str(tmp_path / "cv"), "--roi", "16"]) == 1
    assert "its folds would train different models" in capsys.readouterr().err

    # a window the model cannot take: refused before any fold trains
    roi = [tmp_path / "roi" if a == str(tmp_path / "cv") else a for a in args]
    assert main([str(a) for a in roi[:-5]] + ["9", *roi[-4:]]) == 1
    assert "--roi 9: the unet of fold 0" in capsys.readouterr().err and not (tmp_path / "roi").exists()

    # models scored on a folder prepared otherwise (another size): refused, as infer refuses it
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config"]["size"] = 32
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="was prepared with .*size=32.*training data with .*size=16"):
        evaluate_test([tmp_path / "cv" / "fold1" / "best.pt"], other, ["Case_000"], InferConfig(roi=16),
                      "cpu")

    # a fold left without validation cases (its cases removed by a prep re-run): found before training
    splits = json.loads((other / "splits.json").read_text())
    splits["folds"][1]["val"] = []
    (other / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(ValueError, match="fold 1 has no val cases; remake the splits"):
        fold_count(other, 2)


def test_a_rerun_keeps_the_fold_count_of_its_cv_json(data_dir, tmp_path, monkeypatch, capsys):
    """`cv --out RUN --tta` (rescoring) on a run of 2 folds must not train the splits' other folds."""
    import seg.cv

    asked = []

    def stop(data, folds):
        asked.append(folds)
        raise ValueError("stop here")

    monkeypatch.setattr(seg.cv, "fold_count", stop)
    args = ["cv", "--data", str(data_dir), "--out", str(tmp_path / "cv"), "--device", "cpu", "--tta"]
    main(args)
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "cv.json").write_text(json.dumps({"folds": 2}))
    main(args)
    main([*args, "--folds", "3"])  # given: as given
    assert asked == [None, 2, 3] and "stop here" in capsys.readouterr().err
