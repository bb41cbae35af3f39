"""seg.data.store (.pt format, atomic writes) and seg.data.summary (the Markdown report)."""

from __future__ import annotations

import pytest
import torch

from seg.data.store import COMPACT, PT32, load_case, save_case
from seg.data.summary import summarize
from segbench.cli import main


def _case():
    image = torch.rand(4, 8, 8, 8)
    label = torch.randint(0, 4, (1, 8, 8, 8))
    return image, label, {"id": "x", "crop_start": [1, 2, 3]}


@pytest.mark.parametrize(("fmt", "image_dtype", "label_dtype"),
                         [(PT32, torch.float32, torch.int64), (COMPACT, torch.float16, torch.uint8)])
def test_roundtrip_with_weights_only_load(tmp_path, fmt, image_dtype, label_dtype):
    image, label, meta = _case()
    path = save_case(tmp_path / "x.pt", image, label, meta, fmt)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"image", "label", "meta"}
    assert raw["image"].dtype == image_dtype and raw["label"].dtype == label_dtype
    assert raw["meta"] == {**meta, "format": fmt}
    assert torch.equal(load_case(path, mmap=True)["label"].long(), label)


def test_image_only_has_no_label_key(tmp_path):
    image, _, meta = _case()
    assert "label" not in load_case(save_case(tmp_path / "x.pt", image, None, meta))


def test_failed_write_leaves_neither_file_nor_temp(tmp_path, monkeypatch):
    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_case(tmp_path / "x.pt", *_case())
    assert list(tmp_path.iterdir()) == []


def test_summary_reports_ok_and_failed_cases(bad_prepared, capsys):
    out, _, _ = bad_prepared
    text = summarize(out)
    assert "2 ok, 11 failed" in text
    assert "| BraTS2021_10000 | 2021 | `(4, 32, 32, 32)` float32 |" in text
    assert "(image only)" in text  # BraTS-GLI-00001-000
    assert "**BraTS2021_10003**:" in text and "_t1ce.nii.gz: missing file" in text
    assert "bytes on disk" in text and "label voxel fractions" in text
    assert main(["data", "summary", str(out)]) == 0
    assert capsys.readouterr().out == text


def test_summary_lists_an_unreadable_case_file_and_goes_on(bad_prepared, tmp_path):
    import shutil

    out, _, _ = bad_prepared
    shutil.copytree(out, tmp_path / "prep")
    good = tmp_path / "prep" / "BraTS2021_10000.pt"
    good.write_bytes(good.read_bytes()[:5000])
    text = summarize(tmp_path / "prep")
    assert "## Unreadable files" in text and f"**BraTS2021_10000**: {good}: cannot read" in text
    assert "| BraTS-GLI-00001-000 | 2023 |" in text  # the other case still summarized


def test_data_summary_of_a_packed_or_foreign_folder_says_what_to_summarize(tmp_path):
    import re

    from seg.data.mmap_store import pack
    from seg.data.store import write_json

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    image, label, meta = _case()
    save_case(prepared / "x.pt", image, label, meta)
    write_json(prepared / "manifest.json", {"config": {"size": 8, "format": PT32},
                                            "cases": [{"id": "x", "status": "ok", "file": "x.pt"}]})
    out = tmp_path / "packed"
    pack(prepared, out, progress=False)
    expected = f"{out} is a packed (mmap) folder: summarize the prepared folder it was packed from "
    expected += f"({prepared})"
    with pytest.raises(SystemExit, match=re.escape(expected)):
        main(["data", "summary", str(out)])
    with pytest.raises(SystemExit, match="no manifest.json \\(not a `segbench data prep`"):
        main(["data", "summary", str(tmp_path)])


def test_an_interrupted_atomic_write_leaves_no_temporary_file(tmp_path):
    from seg.data.store import atomic_write

    def interrupted(tmp) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.json", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_a_prepared_file_holding_arbitrary_objects_is_refused_not_unpickled(tmp_path):
    import argparse

    path = tmp_path / "evil.pt"
    torch.save({"image": torch.zeros(1), "meta": argparse.Namespace(x=1)}, path)
    with pytest.raises(ValueError, match="cannot read prepared case"):
        load_case(path)


def test_summary_gives_each_range_and_the_folder_s_label_fractions(tmp_path):
    from seg.data.store import save_case, write_json
    from seg.data.summary import summarize

    for i, case_id in enumerate(("A", "B")):
        image = torch.linspace(0, 1, 4 * 8).reshape(4, 2, 2, 2)
        save_case(tmp_path / f"{case_id}.pt", image, torch.full((1, 2, 2, 2), i), {"convention": "2021"})
    write_json(tmp_path / "manifest.json", {"config": {"size": 2}, "cases": [
        {"id": c, "status": "ok", "file": f"{c}.pt"} for c in ("A", "B")]})
    text = summarize(tmp_path)
    assert "| 0.000..1.000 |" in text
    assert "enhancing): 0.5000 / 0.5000 / 0.0000 / 0.0000" in text
