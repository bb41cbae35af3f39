"""Command-line flags reach the code they configure (infer, cv, ensemble, data prep/splits): each
command's function is replaced by a spy and the configuration it received is checked."""

from __future__ import annotations


def test_infer_cli_window_flags_reach_the_config(monkeypatch, tmp_path):
    import seg.infer_folder
    from segbench.cli import main

    seen = {}
    monkeypatch.setattr(
        seg.infer_folder,
        "infer_folder",
        lambda ckpt, src, out, cfg, device: seen.update(cfg=cfg) or {"cases": []},
    )
    assert (
        main(
            [
                "infer",
                "--checkpoint",
                "m.pt",
                "--src",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--mode",
                "constant",
                "--overlap",
                "0.25",
                "--sw-batch",
                "3",
                "--precision",
                "bf16",
            ]
        )
        == 0
    )
    cfg = seen["cfg"]
    assert (cfg.mode, cfg.overlap, cfg.sw_batch_size, cfg.precision) == ("constant", 0.25, 3, "bf16")


def test_cv_cli_infer_precision_reaches_the_test_predictions(monkeypatch, tmp_path):
    import seg.cv
    from segbench.cli import main

    seen = {}

    def run_cv(base, folds, infer_cfg, tune, given):
        seen["cfg"] = infer_cfg
        raise ValueError("stop here")

    monkeypatch.setattr(seg.cv, "run_cv", run_cv)
    assert (
        main(
            [
                "cv",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "cv"),
                "--infer-precision",
                "bf16",
                "--overlap",
                "0.25",
                "--sw-batch",
                "3",
            ]
        )
        == 1
    )
    cfg = seen["cfg"]
    assert (cfg.precision, cfg.overlap, cfg.sw_batch_size) == ("bf16", 0.25, 3)


def test_ensemble_cli_min_et_reaches_the_ensemble(monkeypatch, tmp_path):
    import seg.ensemble
    from segbench.cli import main

    seen = {}
    monkeypatch.setattr(
        seg.ensemble,
        "ensemble_folders",
        lambda probs, out, min_et: seen.update(min_et=min_et) or {"cases": []},
    )
    assert (
        main(["ensemble", "--probs", str(tmp_path), "--out", str(tmp_path / "o"), "--min-et-mm3", "300"]) == 0
    )
    assert seen["min_et"] == 300.0


def test_data_prep_and_splits_flags_reach_the_code(monkeypatch, tmp_path):
    import seg.data.cases
    import seg.data.prep_folder
    import seg.data.splits
    from segbench.cli import main

    seen = {}
    monkeypatch.setattr(seg.data.cases, "discover", lambda src: ["case"])
    monkeypatch.setattr(seg.data.cases, "unmatched_nifti", lambda src: [])
    monkeypatch.setattr(
        seg.data.prep_folder,
        "prepare_all",
        lambda src, out, cfg, workers: seen.update(cfg=cfg, workers=workers) or {"cases": []},
    )
    monkeypatch.setattr(
        seg.data.splits, "write_splits", lambda *a, **kw: seen.update(splits=kw) or tmp_path / "s"
    )
    assert (
        main(
            [
                "data",
                "prep",
                "--src",
                str(tmp_path),
                "--out",
                str(tmp_path / "p"),
                "--intensity",
                "zscore",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert seen["cfg"].intensity == "zscore" and seen["workers"] == 2
    assert main(["data", "splits", str(tmp_path), "--fractions", "0.6,0.2,0.2"]) == 0
    assert seen["splits"]["fractions"] == (0.6, 0.2, 0.2)
