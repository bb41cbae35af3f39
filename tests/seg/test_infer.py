"""Inference: sliding window + TTA + ensembles, checkpoints, NIfTI output on the source grid."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference

from seg.data.cases import discover
from seg.data.prep import PrepConfig
from seg.infer import TTA_FLIPS, InferConfig, load_model, predict_case, sliding_window_predict
from seg.models import build
from segbench.cli import main

TINY_UNET = dict(channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def _tiny_unet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build("unet", **TINY_UNET).eval()


def _save_checkpoint(path, model: nn.Module, size: int = 32, patch=None) -> None:
    """A checkpoint in `seg.train`'s format (the keys inference reads)."""
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": "unet",
            "model_options": TINY_UNET,
            "config": {"patch": patch, "precision": "fp32"},
            "epoch": 1,
            "best_dice": 0.0,
            "prep": PrepConfig(size=size).to_dict(),
        },
        path,
    )


class ConstantClass(nn.Module):
    """Logits that always pick `label` (a model with a known answer)."""

    def __init__(self, label: int):
        super().__init__()
        self.label = label

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 4, *x.shape[2:], dtype=x.dtype, device=x.device)
        logits[:, self.label] = 10.0
        return logits


def test_tta_is_the_mean_of_flipped_predictions():
    assert len(TTA_FLIPS) == 8 and len(set(TTA_FLIPS)) == 8
    model = _tiny_unet(0)
    torch.manual_seed(1)
    image = torch.rand(1, 4, 20, 24, 28)
    got = sliding_window_predict(
        model, image, roi=16, overlap=0.5, sw_batch_size=2, tta=True, precision="fp32"
    )
    expected = torch.zeros_like(got)
    for dims in TTA_FLIPS:
        x = image.flip(dims) if dims else image
        logits = sliding_window_inference(x, (16, 16, 16), 2, model, overlap=0.5, mode="gaussian")
        p = torch.softmax(logits, 1)
        expected += p.flip(dims) if dims else p
    expected /= 8
    assert got.shape == (1, 4, 20, 24, 28)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(1, 20, 24, 28))
    plain = sliding_window_predict(model, image, roi=16, tta=False, precision="fp32")
    assert not torch.allclose(plain, got, atol=1e-4)  # the flips change a random model's output


def test_windows_keep_a_channels_last_input_s_layout_and_the_prediction_with_it():
    from seg.speed import to_input

    model = _tiny_unet(0)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last_3d) and not args[0].is_contiguous()))
    image = torch.rand(1, 4, 20, 24, 28, generator=torch.Generator().manual_seed(1))
    plain = sliding_window_predict(model, image, roi=16, sw_batch_size=2, tta=True, precision="fp32")
    assert seen and not any(seen)
    seen.clear()
    model = model.to(memory_format=torch.channels_last_3d)
    got = sliding_window_predict(model, to_input(image, True), roi=16, sw_batch_size=2, tta=True,
                                 precision="fp32")
    assert seen and all(seen)  # every window of every flip, as the variant says, not mixed layouts
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)


def test_ensemble_is_the_mean_of_models():
    models = [_tiny_unet(0), _tiny_unet(1)]
    image = torch.rand(2, 4, 16, 16, 16)
    both = sliding_window_predict(models, image, roi=16, precision="fp32")
    each = [sliding_window_predict(m, image, roi=16, precision="fp32") for m in models]
    torch.testing.assert_close(both, (each[0] + each[1]) / 2)


class WindowCounter(nn.Module):
    """Counts the windows it sees; its output depends on the whole window (so the blending matters)."""

    def __init__(self):
        super().__init__()
        self.windows = 0

    def forward(self, x):
        self.windows += x.shape[0]
        return x[:, :4] * 3.0 + 5 * x[:, :4].mean(dim=(2, 3, 4), keepdim=True)


def test_overlap_and_blending_mode_reach_monai():
    torch.manual_seed(0)
    image = torch.rand(1, 4, 32, 32, 32)
    for overlap, mode in ((0.0, "constant"), (0.75, "gaussian"), (0.25, "constant")):
        ours, monai_model = WindowCounter(), WindowCounter()
        got = sliding_window_predict(ours, image, roi=16, overlap=overlap, sw_batch_size=4, mode=mode,
                                     precision="fp32")
        logits = sliding_window_inference(image, (16, 16, 16), 4, monai_model, overlap=overlap, mode=mode)
        assert ours.windows == monai_model.windows, (overlap, mode)
        torch.testing.assert_close(got, torch.softmax(logits, 1))


def test_a_regions_ensemble_thresholds_the_members_mean(tmp_path, monkeypatch):
    import seg.data.inverse as inverse
    from seg.ensemble import ensemble_case, save_probabilities
    from seg.targets import mean_to_labels

    # two members at 0.3 in every region: background (their sum, 0.6, would paint every voxel ET)
    probs = torch.full((3, 4, 4, 4), 0.3)
    assert not mean_to_labels((probs + probs)[None], 2, "regions").any()
    t1 = tmp_path / "t1.nii.gz"
    t1.write_bytes(b"x")  # only its presence is checked before write_prediction reads it
    meta = {"source": {"t1": str(t1)}, "size": 4}
    paths = [save_probabilities(tmp_path / f"{i}_probs.pt", probs, meta, "regions") for i in range(2)]
    written = {}
    monkeypatch.setattr(inverse, "write_prediction",
                        lambda path, label, *a: written.setdefault("label", label))
    ensemble_case(paths, tmp_path / "out.nii.gz")
    assert written["label"].shape == (4, 4, 4) and int(written["label"].max()) == 0


def test_load_model_roundtrip(tmp_path):
    model = _tiny_unet(3)
    _save_checkpoint(tmp_path / "best.pt", model)
    loaded = load_model(tmp_path / "best.pt", "cpu")
    x = torch.rand(1, 4, 16, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: not a readable checkpoint"):
        load_model(tmp_path / "bad.pt")
    # another model's weights under this name: one short message, not torch's list of every key
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    torch.save({**ckpt, "model_options": {**TINY_UNET, "channels": (8, 16, 32)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt: its weights do not fit .* 0 unexpected") as err:
        load_model(tmp_path / "other.pt")
    assert len(str(err.value)) < 300


def test_predict_case_on_the_source_grid_and_convention(shared_data, tmp_path):
    case = next(c for c in discover(shared_data / "brats2021") if c.id == "BraTS2021_90001")
    src = nib.load(str(case.images[0]))
    out = predict_case(ConstantClass(3), case, PrepConfig(size=32), tmp_path, InferConfig(roi=32))
    assert out == tmp_path / "BraTS2021_90001_pred.nii.gz"
    img = nib.load(str(out))
    labels = np.asanyarray(img.dataobj)
    assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    # Prepared label 3 is written as the 2021 label 4 inside the brain box, 0 outside it.
    assert set(np.unique(labels).tolist()) == {0, 4}
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind
    # A 2023-named, image-only case keeps label 3 (its own convention).
    case23 = discover(shared_data / "brats2023" / "BraTS-GLI-00001-000")[0]
    out23 = predict_case(ConstantClass(3), case23, PrepConfig(size=32), tmp_path, InferConfig(roi=32))
    img23 = nib.load(str(out23))
    assert out23.name == "BraTS-GLI-00001-000_pred.nii.gz"
    assert img23.shape == nib.load(str(case23.images[0])).shape
    assert set(np.unique(np.asanyarray(img23.dataobj)).tolist()) == {0, 3}


def test_infer_cli_ensemble_and_bad_case(shared_data, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(shared_data / "brats2021" / "BraTS2021_90001", src / "BraTS2021_90001")
    bad = src / "BraTS2021_00009"
    bad.mkdir()
    for path in (src / "BraTS2021_90001").glob("*.nii.gz"):
        data = path.read_bytes()
        target = bad / path.name.replace("90001", "00009")
        target.write_bytes(data[: len(data) // 3] if "_t1." in path.name else data)  # truncated t1
    for i in (0, 1):
        _save_checkpoint(tmp_path / f"fold{i}.pt", _tiny_unet(i))
    out = tmp_path / "pred"
    out.mkdir()
    (out / "BraTS2021_00009_pred.nii.gz").write_bytes(b"an earlier run's prediction")  # must not survive
    ckpts = [str(tmp_path / "fold0.pt"), str(tmp_path / "fold1.pt")]
    rc = main(["infer", "--checkpoint", *ckpts, "--src", str(src), "--out", str(out), "--roi", "16", "--tta",
               "--min-et-mm3", "1e9"])  # every predicted enhancing tumour is "small": written as core
    assert rc == 1
    err = capsys.readouterr().err  # one line naming the file (the folder not said twice)
    assert f"{bad / 'BraTS2021_00009_t1.nii.gz'}: truncated" in err and err.count(str(bad)) == 1
    img = nib.load(str(out / "BraTS2021_90001_pred.nii.gz"))
    ref = nib.load(str(src / "BraTS2021_90001" / "BraTS2021_90001_t1.nii.gz"))
    assert img.shape == ref.shape == (240, 240, 155) and np.allclose(img.affine, ref.affine)
    assert set(np.unique(np.asanyarray(img.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert not (out / "BraTS2021_00009_pred.nii.gz").exists()
    summary = json.loads((out / "infer.json").read_text())
    assert {r["id"]: r["status"] for r in summary["cases"]} == {
        "BraTS2021_90001": "ok",
        "BraTS2021_00009": "error",
    }
    assert summary["config"]["tta"] is True and summary["config"]["roi"] == 16
    ok_row = next(r for r in summary["cases"] if r["status"] == "ok")
    assert ok_row["et_to_core_voxels"] >= 0 and not (np.asarray(img.dataobj) == 4).any()
    # a window the network cannot take (TINY_UNET halves twice): refused before any case, naming it
    out2 = tmp_path / "p2"
    rc = main(["infer", "--checkpoint", ckpts[0], "--src", str(src), "--out", str(out2), "--roi", "18"])
    assert rc == 1 and "--roi 18: the unet of" in capsys.readouterr().err
    assert not out2.exists()
    # one id in two folders would write one file twice: refused, naming both
    twice = tmp_path / "twice"
    for sub in ("a", "b"):
        shutil.copytree(src / "BraTS2021_90001", twice / sub / "BraTS2021_90001")
    rc = main(["infer", "--checkpoint", ckpts[0], "--src", str(twice), "--out", str(out2), "--roi", "16"])
    err = capsys.readouterr().err
    assert rc == 1 and "case BraTS2021_90001 is in both" in err and "twice/a" in err and "twice/b" in err


def test_bad_window_settings_are_refused_up_front():
    for kwargs, message in (({"roi": 0}, "--roi 0"), ({"overlap": 1.0}, "--overlap 1.0"),
                            ({"sw_batch_size": 0}, "--sw-batch 0"), ({"mode": "mean"}, "--mode mean")):
        with pytest.raises(ValueError, match=message):
            InferConfig(**kwargs)


@pytest.mark.parametrize("command", ["infer", "cv"])
def test_bad_window_settings_are_a_usage_error_before_any_work(tmp_path, capsys, command):
    args = (["--checkpoint", str(tmp_path / "m.pt"), "--src", str(tmp_path)] if command == "infer"
            else ["--data", str(tmp_path)])
    rc = main([command, *args, "--out", str(tmp_path / "out"), "--roi", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"segbench {command}: --roi 0: a window edge is at least 1 voxel"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_clear_error(tmp_path, capsys):
    _save_checkpoint(tmp_path / "m.pt", _tiny_unet(0))
    rc = main(["infer", "--checkpoint", str(tmp_path / "m.pt"), "--src", str(tmp_path), "--out",
               str(tmp_path / "p"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 1 and "--device cuda: PyTorch" in err and "sees no CUDA device" in err
    assert not (tmp_path / "p").exists()


def test_an_infer_ensemble_takes_models_stored_in_another_format_but_not_other_intensities(tmp_path, capsys):
    """One input is prepared for all the models: its grid and intensities must be each model's; the
    storage format (pt32 / compact) never reaches inference."""
    first, other = tmp_path / "a.pt", tmp_path / "b.pt"
    _save_checkpoint(first, _tiny_unet(0))
    (tmp_path / "empty").mkdir()
    for change, refused in (({"format": "compact"}, False), ({"intensity": "zscore"}, True)):
        _save_checkpoint(other, _tiny_unet(1))
        state = torch.load(other, weights_only=False)
        torch.save({**state, "prep": {**state["prep"], **change}}, other)
        args = ["infer", "--checkpoint", str(first), str(other), "--src", str(tmp_path / "empty"), "--out",
                str(tmp_path / "pred"), "--device", "cpu"]
        assert main(args) != 0
        err = capsys.readouterr().err
        assert (f"{other}: prepared with" in err) == refused, err  # else it goes on to find no cases


def test_ensemble_of_saved_probabilities_equals_one_infer_call(shared_data, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(shared_data / "brats2021" / "BraTS2021_90001", src / "BraTS2021_90001")
    ckpts = []
    for i in (0, 1):
        ckpts.append(str(tmp_path / f"fold{i}.pt"))
        _save_checkpoint(ckpts[-1], _tiny_unet(i))
    common = ["--src", str(src), "--roi", "16", "--device", "cpu", "--precision", "fp32"]
    for i, ckpt in enumerate(ckpts):
        run = ["infer", "--checkpoint", ckpt, "--out", str(tmp_path / f"run{i}"), "--save-probabilities"]
        assert main([*run, *common]) == 0
    assert main(["infer", "--checkpoint", *ckpts, "--out", str(tmp_path / "both"), *common]) == 0
    saved = torch.load(tmp_path / "run0" / "BraTS2021_90001_probs.pt", weights_only=True)
    assert saved["probs"].dtype == torch.float32 and saved["probs"].shape == (4, 32, 32, 32)
    assert saved["target"] == "labels"
    assert not (tmp_path / "both" / "BraTS2021_90001_probs.pt").exists()  # only when asked

    out = tmp_path / "ens"
    ensemble = ["ensemble", "--probs", str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", str(out)]
    assert main(ensemble) == 0
    mine = np.asanyarray(nib.load(str(out / "BraTS2021_90001_pred.nii.gz")).dataobj)
    one_call = np.asanyarray(nib.load(str(tmp_path / "both" / "BraTS2021_90001_pred.nii.gz")).dataobj)
    assert np.array_equal(mine, one_call)
    assert len(np.unique(one_call)) > 1  # the two untrained models do not agree on one class everywhere
    summary = json.loads((out / "ensemble.json").read_text())
    assert [r["status"] for r in summary["cases"]] == ["ok"]

    # the same case reached by another path (another mount): its run still averages; a source that
    # is gone is read from another run's
    shutil.copytree(src, tmp_path / "mounted")
    run = ["infer", "--checkpoint", ckpts[1], "--out", str(tmp_path / "run1"), "--save-probabilities"]
    assert main([*run, "--src", str(tmp_path / "mounted"), *common[2:]]) == 0
    shutil.rmtree(tmp_path / "mounted")
    assert main(ensemble) == 0
    assert np.array_equal(np.asanyarray(nib.load(str(out / "BraTS2021_90001_pred.nii.gz")).dataobj), one_call)
    # infer without --save-probabilities removes an earlier run's file (ensemble would take it)
    assert main(["infer", "--checkpoint", ckpts[0], "--out", str(tmp_path / "run0"), *common]) == 0
    assert not (tmp_path / "run0" / "BraTS2021_90001_probs.pt").exists()
    assert main(["infer", "--checkpoint", ckpts[0], "--out", str(tmp_path / "run0"), "--save-probabilities",
                 *common]) == 0

    # models prepared with other intensities or stored in another format average (the grid is one);
    # another prepared grid does not
    probs_file = tmp_path / "run1" / "BraTS2021_90001_probs.pt"
    saved = torch.load(probs_file, weights_only=True)
    other = {**saved["meta"]["config"], "intensity": "zscore", "format": "compact"}
    torch.save({**saved, "meta": {**saved["meta"], "config": other}}, probs_file)
    assert main(ensemble) == 0
    torch.save({**saved, "meta": {**saved["meta"], "crop_start": [0, 0, 0]}}, probs_file)
    capsys.readouterr()
    assert main(ensemble) == 1
    assert f"{probs_file}: another prepared case or prep settings than" in capsys.readouterr().err
    # probabilities of another target do not average: one line naming the file
    torch.save(dict(torch.load(probs_file, weights_only=True), target="regions"), probs_file)
    capsys.readouterr()
    assert main(ensemble) == 1
    assert f"{probs_file}: another target (regions) than" in capsys.readouterr().err

    # a case one folder lacks: an error line naming it, the others go on
    (tmp_path / "run1" / "BraTS2021_90001_probs.pt").rename(tmp_path / "run1" / "BraTS2021_90002_probs.pt")
    capsys.readouterr()
    assert main(ensemble) == 1
    err = capsys.readouterr().err
    assert f"no probabilities for case BraTS2021_90001 in {tmp_path / 'run1'}" in err
    assert f"no probabilities for case BraTS2021_90002 in {tmp_path / 'run0'}" in err
    assert not (out / "BraTS2021_90001_pred.nii.gz").exists()  # the earlier label map is not left standing
    # a folder without probabilities: one line
    (tmp_path / "empty").mkdir()
    assert main(["ensemble", "--probs", str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "no *_probs.pt files" in capsys.readouterr().err


def test_a_folder_predicted_with_host_work_overlapped_equals_one_predicted_in_turn(shared_data, tmp_path):
    """The pipelined folder run (the default on CUDA: next case prepared and last case written in
    threads) writes the same files and rows as the serial one, a bad case included."""
    from seg.infer_folder import infer_folder

    src = tmp_path / "src"
    for case_id in ("BraTS2021_90001", "BraTS2021_90002"):
        shutil.copytree(shared_data / "brats2021" / case_id, src / case_id)
    bad = src / "BraTS2021_90001b"  # in the middle: a failed preparation between two good cases
    bad.mkdir()
    for path in (src / "BraTS2021_90001").glob("*.nii.gz"):
        data = path.read_bytes()
        (bad / path.name.replace("90001", "90001b")).write_bytes(data[: len(data) // 3] if "_t1." in path.name
                                                                 else data)
    _save_checkpoint(tmp_path / "m.pt", _tiny_unet(0))
    cfg = InferConfig(roi=16, min_et_mm3=100.0)
    runs = {}
    for overlap in (False, True):
        out = tmp_path / f"out-{overlap}"
        summary = infer_folder([tmp_path / "m.pt"], src, out, cfg, "cpu", overlap_host=overlap)
        rows = [{k: v for k, v in r.items() if k not in ("seconds", "file")} for r in summary["cases"]]
        written = {p.name: np.asarray(nib.load(str(p)).dataobj) for p in out.glob("*_pred.nii.gz")}
        runs[overlap] = (rows, written)
        assert all(r["seconds"] > 0 for r in summary["cases"])  # a failed case too: its time until it failed
    assert runs[True][0] == runs[False][0]
    assert [(r["id"], r["status"]) for r in runs[True][0]] == [  # in discovery order
        ("BraTS2021_90001", "ok"), ("BraTS2021_90001b", "error"), ("BraTS2021_90002", "ok")]
    assert runs[True][1].keys() == runs[False][1].keys() == {"BraTS2021_90001_pred.nii.gz",
                                                             "BraTS2021_90002_pred.nii.gz"}
    for name, labels in runs[True][1].items():
        assert np.array_equal(labels, runs[False][1][name])


def test_a_case_that_fails_now_leaves_no_probabilities_of_an_earlier_run(tmp_path):
    from seg.data.synth import write_cases
    from seg.infer_folder import infer_folder

    ckpt = tmp_path / "m.pt"
    _save_checkpoint(ckpt, _tiny_unet(0), size=16)
    (case,) = write_cases(tmp_path / "src", 1, seed=2, shape=(24, 24, 16))
    t1 = next(case.glob("*_t1.nii.gz"))
    t1.write_bytes(t1.read_bytes()[:100])  # truncated: the case fails
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"{case.name}_probs.pt"  # `segbench ensemble` would average it in as this run's
    stale.write_bytes(b"an earlier run's probabilities")
    summary = infer_folder([ckpt], tmp_path / "src", out, InferConfig(roi=16, save_probabilities=True), "cpu")
    assert [r["status"] for r in summary["cases"]] == ["error"] and not stale.exists()
