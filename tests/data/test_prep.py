"""seg.data.prep: the eight steps on real cases, against a plain MONAI pipeline; formats and
intensity options; seg.data.prep_folder.prepare_all / `segbench data prep` (bad inputs, skipping,
workers)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from seg.data.cases import discover
from seg.data.prep import PrepConfig, prepare_case
from seg.data.prep_folder import prepare_all
from seg.data.store import load_case
from segbench.cli import main


def test_real_2021_case_gives_the_contract_shapes_and_values(real_prepared):
    _, out = real_prepared["BraTS2021_90001"]
    img, lab = out["image"], out["label"]
    assert type(img) is torch.Tensor and type(lab) is torch.Tensor  # no MetaTensor in the file
    assert img.shape == (4, 128, 128, 128) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert lab.shape == (1, 128, 128, 128) and lab.dtype == torch.int64
    assert set(torch.unique(lab).tolist()) == {0, 1, 2, 3}
    # the box comes from the raw brain mask: background in 90001 is slightly negative, and a box
    # taken after scaling would be the whole volume
    meta = out["meta"]
    box = np.subtract(meta["crop_end"], meta["crop_start"])
    assert np.prod(box) < 0.5 * np.prod(meta["resampled_shape"])


def _monai_reference(case, size):
    """The same steps written as one plain MONAI dictionary pipeline."""
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        CopyItemsd,
        CropForegroundd,
        DeleteItemsd,
        LoadImaged,
        MapLabelValued,
        Orientationd,
        Resized,
        ScaleIntensityd,
        Spacingd,
    )

    mods = ["t1", "t1ce", "t2", "flair"]
    keys = ["image", "label"]
    pipeline = Compose([
        LoadImaged(keys=[*mods, "label"], ensure_channel_first=True, image_only=True),
        ConcatItemsd(keys=mods, name="image", dim=0),
        DeleteItemsd(keys=mods),
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest"), padding_mode="zeros"),
        CopyItemsd(keys="image", names="raw"),
        ScaleIntensityd(keys="image", channel_wise=True),
        CropForegroundd(keys=keys, source_key="raw", select_fn=lambda x: x != 0, allow_smaller=True),
        Resized(keys=keys, spatial_size=(size,) * 3, mode=("trilinear", "nearest-exact")),
        MapLabelValued(keys="label", orig_labels=[0, 1, 2, 4], target_labels=[0, 1, 2, 3]),
    ])
    return pipeline({**{m: str(p) for m, p in zip(mods, case.images, strict=True)}, "label": str(case.seg)})


def test_agrees_with_a_plain_monai_pipeline(real_prepared):
    case, out = real_prepared["BraTS2021_90001"]
    ref = _monai_reference(case, 128)
    torch.testing.assert_close(out["image"], ref["image"].as_tensor().float(), atol=1e-5, rtol=0)
    assert torch.equal(out["label"], ref["label"].as_tensor().long())


def test_validated_images_are_prepared_without_reading_the_files_again(real_prepared, tmp_path):
    """prep and infer validate a case, then prepare it from the images validation decompressed:
    the same tensors and meta as reading the files, with the files gone after validation."""
    import shutil

    from seg.data.cases import read_validated

    case, from_disk = real_prepared["BraTS2021_90001"]
    shutil.copytree(case.images[0].parent, tmp_path / case.id)
    copy = discover(tmp_path)[0]
    errors, images = read_validated(copy)
    assert errors == [] and sorted(images) == sorted(str(p) for p in copy.files)
    for path in copy.files:
        path.unlink()
    out = prepare_case(copy, PrepConfig(), images)
    assert torch.equal(out["image"], from_disk["image"]) and torch.equal(out["label"], from_disk["label"])
    assert {k: v for k, v in out["meta"].items() if k not in ("source", "seg")} == \
        {k: v for k, v in from_disk["meta"].items() if k not in ("source", "seg")}


def test_2023_named_case_prepares_with_labels_kept(real_prepared):
    _, out = real_prepared["BraTS-GLI-90003-000"]
    assert out["image"].shape == (4, 128, 128, 128)
    assert set(torch.unique(out["label"]).tolist()) == {0, 1, 2, 3}
    assert out["meta"]["convention"] == "2023"


def test_image_only_case_prepares_without_label(shared_data):
    case = next(c for c in discover(shared_data / "brats2023") if c.id == "BraTS-GLI-00001-000")
    out = prepare_case(case, PrepConfig(size=32))
    assert "label" not in out and out["meta"]["seg"] is None
    assert out["image"].shape == (4, 32, 32, 32)
    assert float(out["image"].min()) >= 0 and float(out["image"].max()) <= 1


@pytest.mark.parametrize("intensity", ["window", "zscore"])
def test_other_intensity_modes_stay_in_unit_range(synth_small, intensity):
    case = discover(synth_small)[0]
    img = prepare_case(case, PrepConfig(size=32, intensity=intensity))["image"]
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    if intensity == "zscore":  # background stays 0, brain sits around the middle (z = 0 -> 0.5)
        assert float(img[:, 0, 0, 0].abs().max()) == 0.0
        brain = img[0] > 0
        assert 0.35 < float(img[0][brain].median()) < 0.65
    if intensity == "window":  # raw / 3000, where min-max would be raw / max (background is 0)
        minmax = prepare_case(case, PrepConfig(size=32))["image"]
        for c, path in enumerate(case.images):
            raw_max = float(np.asanyarray(nib.load(str(path)).dataobj).max())
            inside = minmax[c] > 0.05
            ratio = img[c][inside] / minmax[c][inside]
            assert float(ratio.min()) == pytest.approx(raw_max / 3000, rel=1e-3)
            assert float(ratio.max()) == pytest.approx(raw_max / 3000, rel=1e-3)


def test_compact_format_halves_the_image_and_keeps_values(synth_small, tmp_path):
    for fmt in ("pt32", "compact"):
        prepare_all(synth_small, tmp_path / fmt, PrepConfig(size=32, format=fmt))
    name = "BraTS2021_00001.pt"
    a, b = load_case(tmp_path / "pt32" / name), load_case(tmp_path / "compact" / name)
    assert b["image"].dtype == torch.float16 and b["label"].dtype == torch.uint8
    assert a["image"].dtype == torch.float32 and a["label"].dtype == torch.int64
    torch.testing.assert_close(b["image"].float(), a["image"], atol=1e-3, rtol=0)
    assert torch.equal(b["label"].long(), a["label"])
    assert (tmp_path / "compact" / name).stat().st_size < 0.6 * (tmp_path / "pt32" / name).stat().st_size


def test_bad_inputs_fail_alone_with_exit_status_1(bad_prepared, bad_src):
    out, rc, stderr = bad_prepared
    _, expect = bad_src
    assert rc == 1
    manifest = json.loads((out / "manifest.json").read_text())
    status = {e["id"]: e for e in manifest["cases"]}
    for cid, (file_name, words) in expect.items():
        assert status[cid]["status"] == "error"
        assert file_name in status[cid]["error"] and words in status[cid]["error"]
        assert any(file_name in line and words in line for line in stderr.splitlines()), cid
        # one line per bad case, even for the native case with two modalities off its grid
        assert sum(cid in line for line in stderr.splitlines()) == 1, cid
        assert "\n" not in status[cid]["error"]
        assert not (out / f"{cid}.pt").exists()
    for cid in ("BraTS2021_10000", "BraTS-GLI-00001-000"):  # the good ones are still prepared
        assert status[cid]["status"] == "ok"
        assert load_case(out / status[cid]["file"])["image"].shape == (4, 32, 32, 32)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    splits = json.loads((out / "splits.json").read_text())  # only the labelled ok case is split
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ["BraTS2021_10000"]


def test_rerun_skips_finished_cases_and_redoes_changed_ones(synth_small, tmp_path, capsys, monkeypatch):
    import os

    args = ["data", "prep", "--src", str(synth_small), "--out", str(tmp_path), "--size", "24"]
    assert main(args) == 0
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 2
    stamps = {p: p.stat().st_mtime_ns for p in files}
    # meta names the source files whatever folder prep ran in
    assert Path(load_case(files[0], mmap=True)["meta"]["source"]["t1"]).is_absolute()

    monkeypatch.chdir(synth_small.parent)  # same sources, given relative to another folder
    relative = ["data", "prep", "--src", synth_small.name, *args[4:]]
    assert main(relative) == 0  # same config: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    entries = json.loads((tmp_path / "manifest.json").read_text())["cases"]
    assert all(e.get("skipped") for e in entries)

    src = next(synth_small.glob("BraTS2021_00002/*_t2.nii.gz"))  # a touched source is redone
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert main(args) == 0
    entries = {e["id"]: e for e in json.loads((tmp_path / "manifest.json").read_text())["cases"]}
    assert entries["BraTS2021_00001"].get("skipped") and not entries["BraTS2021_00002"].get("skipped")

    assert main([*args[:-1], "20"]) == 0  # another config: everything redone
    entries = json.loads((tmp_path / "manifest.json").read_text())["cases"]
    assert not any(e.get("skipped") for e in entries)
    assert load_case(files[0])["image"].shape == (4, 20, 20, 20)
    capsys.readouterr()

    # a re-run with another config stopped after its first case leaves no file of the old size
    from seg.data import prep_folder as prep

    real_prepare_one = prep._prepare_one

    def first_then_stop(case, cfg, out_dir):
        if case.id == "BraTS2021_00002":
            raise KeyboardInterrupt
        return real_prepare_one(case, cfg, out_dir)

    monkeypatch.setattr(prep, "_prepare_one", first_then_stop)
    assert main([*args[:-1], "16"]) == 130  # Ctrl-C
    assert [load_case(p)["image"].shape[1] for p in sorted(tmp_path.glob("*.pt"))] == [16]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["size"] == 16 and [e["id"] for e in manifest["cases"]] == ["BraTS2021_00001"]
    from seg.train.loop import select_ids

    with pytest.raises(ValueError, match="names 1 case\\(s\\) the folder does not hold prepared with a "
                                         "label: BraTS2021_00002 .*`segbench data splits`"):
        select_ids(tmp_path, 0)  # splits.json still holds the case the stopped run removed


def test_two_worker_processes_give_the_same_files(synth_small, tmp_path):
    one = prepare_all(synth_small, tmp_path / "w1", PrepConfig(size=24), workers=1)
    two = prepare_all(synth_small, tmp_path / "w2", PrepConfig(size=24), workers=2)
    assert [e["status"] for e in one["cases"]] == [e["status"] for e in two["cases"]] == ["ok", "ok"]
    for e in two["cases"]:
        assert e["peak_rss_bytes"] > 0
        a, b = load_case(tmp_path / "w1" / e["file"]), load_case(tmp_path / "w2" / e["file"])
        torch.testing.assert_close(a["image"], b["image"], atol=1e-6, rtol=0)
        assert torch.equal(a["label"], b["label"])


def _killed_on_the_first_case(case, cfg, out_dir):
    """Runs in a pool worker (spawned: this module is imported there, seg.data.prep_folder unpatched)."""
    import os
    import signal

    from seg.data import prep_folder as prep

    if case.id.endswith("00001"):  # as the OOM killer would
        os.kill(os.getpid(), signal.SIGKILL)
    return prep._prepare_one(case, cfg, out_dir)


def test_a_worker_killed_mid_case_costs_only_that_case(synth_small, tmp_path, monkeypatch, capsys):
    from seg.data import prep_folder as prep

    monkeypatch.setattr(prep, "_prepare_one", _killed_on_the_first_case)
    manifest = prepare_all(synth_small, tmp_path / "out", PrepConfig(size=24), workers=2)
    status = {e["id"]: e["status"] for e in manifest["cases"]}
    killed = next(i for i in status if i.endswith("00001"))
    assert status.pop(killed) == "error" and set(status.values()) == {"ok"} and status
    assert "died (out of memory?)" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob(f"{killed}*")) and not list((tmp_path / "out").glob(".*.tmp"))


def test_a_case_whose_worker_the_broken_pool_killed_mid_write_is_redone_cleanly(synth_small, tmp_path,
                                                                                 monkeypatch):
    # When one worker dies the pool kills the others, perhaps inside atomic_write: their temporary
    # files stay behind unless removed before the case is retried (seen once in a full test run).
    from seg.data import prep_folder as prep

    real = prep._prepare_in_pool
    out = tmp_path / "out"

    def pool(cases, cfg, out_dir, workers, threads, done):
        if len(cases) == 1:
            return real(cases, cfg, out_dir, workers, threads, done)
        victim = cases[0]
        (out_dir / f".{victim.id}.pt.4242.deadbeef.tmp").write_bytes(b"half a case")
        real(cases[1:], cfg, out_dir, workers, threads, done)
        return [victim]

    monkeypatch.setattr(prep, "_prepare_in_pool", pool)
    manifest = prepare_all(synth_small, out, PrepConfig(size=24), workers=2)
    assert {e["status"] for e in manifest["cases"]} == {"ok"}
    assert not list(out.glob(".*.tmp"))


def test_empty_source_is_an_error(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert main(["data", "prep", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 1
    assert "no BraTS cases found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing made that looks like a prepared folder
    # a path that is not there, and a prepared folder given for raw cases, say so
    assert main(["data", "prep", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 1
    assert "nope: no such file or folder" in capsys.readouterr().err
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.json").write_text("{}")
    assert main(["data", "prep", "--src", str(tmp_path / "prepared"), "--out", str(tmp_path / "out")]) == 1
    assert "prepared: a prepared folder (`segbench data prep` output)" in capsys.readouterr().err


def test_a_prep_re_run_with_a_case_fewer_moves_no_case_between_splits(tmp_path):
    import shutil

    from seg.data.synth import write_cases

    raw = tmp_path / "raw"
    cases = write_cases(raw, 6, seed=5, shape=(24, 24, 16))
    args = ["data", "prep", "--src", str(raw), "--out", str(tmp_path / "out"), "--size", "16"]
    assert main(args) == 0
    before = json.loads((tmp_path / "out" / "splits.json").read_text())
    gone = before["test"][0]
    shutil.rmtree(next(c for c in cases if c.name == gone))  # as a case that fails on the re-run
    (tmp_path / "out" / f"{gone}.pt").unlink()
    main(args)
    after = json.loads((tmp_path / "out" / "splits.json").read_text())
    for name in ("train", "val", "test"):
        assert set(before[name]) - {gone} == set(after[name]), name


def test_minmax_on_the_foreground_box_equals_monai_s_scaling_of_the_whole_volume():
    """Step 4 runs on the cropped box for minmax: bit-identical to ScaleIntensity over the whole
    volume (zeros outside the box widen each channel's range to 0), a constant channel included."""
    from monai.transforms import CropForeground, ScaleIntensity

    from seg.data.prep import _minmax_in_box

    g = torch.Generator().manual_seed(0)
    volume = torch.zeros(4, 20, 22, 18)
    volume[:, 3:15, 4:20, 2:16] = torch.rand(4, 12, 16, 14, generator=g) * 900 + 100  # all positive
    volume[1, 3:15, 4:20, 2:16] -= 2000  # a channel entirely negative inside the box
    volume[2, 3:15, 4:20, 2:16] = 7.0  # a constant channel
    for whole in (volume, volume[:, 3:15, 4:20, 2:16].clone()):  # a box smaller than the volume, and equal
        cropper = CropForeground(select_fn=lambda x: x != 0, allow_smaller=True)
        start, end = cropper.compute_bounding_box(whole)
        expected = cropper.crop_pad(ScaleIntensity(minv=0.0, maxv=1.0, channel_wise=True)(whole), start, end)
        got = _minmax_in_box(cropper.crop_pad(whole, start, end), tuple(whole.shape[1:]))
        assert torch.equal(got, expected.as_tensor())


def _own_sources(tmp_path, n: int = 2):
    """A source folder of its own (a test edits it), prepared once at size 16; (raw, out, rerun)."""
    from seg.data.synth import write_cases

    raw, out = tmp_path / "raw", tmp_path / "out"
    write_cases(raw, n, seed=1, shape=(24, 24, 16))
    rerun = lambda: prepare_all(raw, out, PrepConfig(size=16), workers=1)  # noqa: E731
    rerun()
    return raw, out, rerun


def test_a_rerun_makes_a_deleted_prepared_file_again_and_drops_one_whose_source_now_fails(tmp_path):
    raw, out, rerun = _own_sources(tmp_path)
    gone = sorted(out.glob("*.pt"))[0]
    gone.unlink()  # removed by hand (damaged); its sources are unchanged
    entries = {e["id"]: e for e in rerun()["cases"]}
    assert gone.is_file() and entries[gone.stem]["status"] == "ok" and not entries[gone.stem].get("skipped")
    case = sorted(p for p in raw.iterdir() if p.is_dir())[0]
    t1 = next(case.glob("*_t1.nii.gz"))
    t1.write_bytes(t1.read_bytes()[:200])  # its source truncated: the case fails now
    entries = {e["id"]: e for e in rerun()["cases"]}
    assert entries[case.name]["status"] == "error"
    assert not (out / f"{case.name}.pt").exists()  # no stale file beside its error entry


def test_two_folders_of_one_case_id_are_not_both_prepared(tmp_path):
    import shutil

    from seg.data.synth import write_cases

    (case,) = write_cases(tmp_path / "raw" / "a", 1, seed=1, shape=(24, 24, 16))
    shutil.copytree(case, tmp_path / "raw" / "b" / case.name)
    manifest = prepare_all(tmp_path / "raw", tmp_path / "out", PrepConfig(size=16), workers=1)
    errors = [e for e in manifest["cases"] if e["status"] == "error"]
    assert len(manifest["cases"]) == 2 and len(errors) == 1 and "duplicate case id" in errors[0]["error"]
