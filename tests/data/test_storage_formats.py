"""Prepared data in other storage: mmap packing (and its refusals), format conversion with values kept,
the pack and convert commands."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from prepared_folders import FP16_TOL, IDS, write_prepared

from seg.data import mmap_store
from seg.data.formats import convert, open_reader, storage_format
from seg.data.splits import write_splits
from seg.data.store import save_case


def test_pack_round_trip_and_skip(prepared, tmp_path, capsys):
    out = tmp_path / "packed"
    index = mmap_store.pack(prepared, out, progress=False)
    assert index["rows"] == 5 and index["errors"] == [] and index["shape"] == [4, 10, 10, 10]
    store = mmap_store.PackedStore(out)
    images, labels = store.arrays()
    assert isinstance(images, np.memmap) and images.dtype == np.float16 and labels.dtype == np.uint8
    for case_id in IDS:
        src = torch.load(prepared / f"{case_id}.pt", weights_only=True)
        got = store.read(case_id)
        np.testing.assert_allclose(got["image"], src["image"].numpy(), atol=FP16_TOL)
        assert np.array_equal(got["label"], src["label"].numpy())
        assert store.entries[case_id]["meta"]["affine"] == np.eye(4).tolist()
    assert (out / "splits.json").read_text() == (prepared / "splits.json").read_text()
    assert pickle.loads(pickle.dumps(store))._arrays is None  # workers map the files themselves

    stamp = (out / mmap_store.INDEX).stat().st_mtime_ns
    mmap_store.pack(prepared, out, progress=False)  # unchanged source: skipped
    assert (out / mmap_store.INDEX).stat().st_mtime_ns == stamp
    only = mmap_store.pack(prepared, out, ids=IDS[:2], progress=False)  # other cases: rebuilt
    assert [c["id"] for c in only["cases"]] == IDS[:2]
    assert not list(tmp_path.glob(".packed*"))  # no temporary folder left behind


@pytest.mark.parametrize("bad", ["Case_000", "Case_001"])  # the first case, too, gives no shape
def test_pack_reports_a_bad_case_and_packs_the_others(tmp_path, capsys, bad):
    src = write_prepared(tmp_path / "src", ids=IDS[:3])
    (src / f"{bad}.pt").write_bytes(b"truncated")
    index = mmap_store.pack(src, tmp_path / "out", progress=False)
    assert [c["id"] for c in index["cases"]] == [i for i in IDS[:3] if i != bad]
    assert [e["id"] for e in index["errors"]] == [bad] and index["shape"] == [4, 10, 10, 10]
    err = capsys.readouterr().err
    assert f"cannot pack prepared case {bad}: " in err and err.count("\n") == 1
    assert err.count(f"{bad}.pt") == 1  # the file named once
    from seg.commands.pack import main as pack_main

    # an unchanged source is skipped, and the summary names the failed case again
    assert pack_main(["pack", "--src", str(src), "--out", str(tmp_path / "out")]) == 1
    assert f"1 failed ({bad}: see " in capsys.readouterr().out
    index_path = tmp_path / "out" / "index.json"
    assert open_reader(tmp_path / "out").missing([bad]) == [f"{bad} (not in {index_path})"]
    stamp = (tmp_path / "out" / "index.json").stat().st_mtime_ns
    mmap_store.pack(src, tmp_path / "out", progress=False)  # unchanged source, bad case and all: skipped
    assert (tmp_path / "out" / "index.json").stat().st_mtime_ns == stamp and not capsys.readouterr().err


def test_a_truncated_packed_array_is_named(tmp_path):
    src = write_prepared(tmp_path / "src", ids=IDS[:2])
    mmap_store.pack(src, tmp_path / "out", progress=False)
    images = tmp_path / "out" / mmap_store.IMAGES
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    with pytest.raises(RuntimeError, match=f"{images}: cannot map the packed array"):
        mmap_store.PackedStore(tmp_path / "out").arrays()


def test_convert_between_formats_keeps_values(prepared, formats, tmp_path):
    assert formats["pt32"] == prepared and storage_format(formats["compact"]) == "compact"
    assert storage_format(formats["mmap"]) == "mmap"
    back = convert(formats["mmap"], tmp_path / "back", "pt32", progress=False)
    for case_id in IDS:
        a, b = open_reader(prepared).read(case_id), open_reader(back).read(case_id)
        assert b["image"].dtype == torch.float32 and b["label"].dtype == torch.int64
        assert torch.allclose(a["image"], b["image"], atol=FP16_TOL) and torch.equal(a["label"], b["label"])
    manifest = json.loads((back / "manifest.json").read_text())
    assert manifest["config"]["format"] == "pt32" and manifest["config"]["size"] == 10
    stamp = (back / "manifest.json").stat().st_mtime_ns
    convert(formats["mmap"], back, "pt32", progress=False)  # same source: skipped
    assert (back / "manifest.json").stat().st_mtime_ns == stamp
    # the splits travel with the cases: a training run on the converted folder sees the same split
    splits = (back / "splits.json", prepared / "splits.json")
    assert json.loads(splits[0].read_text()) == json.loads(splits[1].read_text())
    convert(formats["mmap"], back, "compact", progress=False)  # another format asked for: converted
    assert open_reader(back).read(IDS[0])["image"].dtype == torch.float16
    assert json.loads((back / "manifest.json").read_text())["config"]["format"] == "compact"


def test_a_store_opened_before_a_re_pack_refuses_to_read_the_new_arrays(prepared, tmp_path):
    out = tmp_path / "packed"
    mmap_store.pack(prepared, out, progress=False)
    store = pickle.loads(pickle.dumps(mmap_store.PackedStore(out)))  # as a DataLoader worker gets it
    mmap_store.pack(prepared, out, ids=IDS[1:], progress=False)  # one case fewer: every row shifts
    with pytest.raises(RuntimeError, match="packed again since this store was opened"):
        store.read(IDS[1])
    assert mmap_store.PackedStore(out).read(IDS[1])["label"].shape == (1, 10, 10, 10)


def test_pack_and_convert_refuse_to_overwrite_what_is_not_theirs(prepared, tmp_path, capsys):
    from segbench.cli import main

    with pytest.raises(SystemExit, match="must not be its source"):
        main(["data", "pack", "--src", str(prepared), "--out", str(prepared)])
    other = tmp_path / "raw"
    other.mkdir()
    (other / "keep.nii.gz").write_bytes(b"someone's data")
    with pytest.raises(SystemExit, match="exists and is not a packed folder"):
        main(["data", "pack", "--src", str(prepared), "--out", str(other)])
    assert (other / "keep.nii.gz").read_bytes() == b"someone's data"
    with pytest.raises(SystemExit, match="must not be its source"):
        main(["data", "convert", "--src", str(prepared), "--out", str(prepared), "--format", "compact"])
    # a prepared folder, or another source's conversion, is not replaced
    mine = convert(prepared, tmp_path / "mine", "compact", progress=False)
    with pytest.raises(SystemExit, match=f"holds prepared data, not of {mine}"):
        main(["data", "convert", "--src", str(mine), "--out", str(prepared), "--format", "compact"])
    other_src = write_prepared(tmp_path / "other_src", ids=IDS[:2])
    with pytest.raises(SystemExit, match=f"holds a conversion of {prepared.resolve()}, not of"):
        main(["data", "convert", "--src", str(other_src), "--out", str(mine), "--format", "compact"])


def test_a_conversion_stopped_midway_is_redone_and_splits_follow_their_source(tmp_path, monkeypatch):
    from seg.data import formats

    src = write_prepared(tmp_path / "src", ids=IDS[:3])
    out = convert(src, tmp_path / "out", "compact", progress=False)
    (src / f"{IDS[0]}.pt").touch()  # the source changed: the next conversion redoes it ...
    calls = []

    def stop_at_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return save_case(path, *args, **kwargs)

    monkeypatch.setattr(formats, "save_case", stop_at_second)
    with pytest.raises(KeyboardInterrupt):  # ... and is stopped midway
        convert(src, out, "pt32", progress=False)
    assert not (out / "manifest.json").exists()  # nothing that looks done
    monkeypatch.undo()
    convert(src, out, "pt32", progress=False)
    assert all(open_reader(out).read(i)["image"].dtype == torch.float32 for i in IDS[:3])
    # splits re-made on the source reach an unchanged conversion and pack too
    packed = tmp_path / "packed"
    mmap_store.pack(src, packed, progress=False)
    write_splits(src, ids=IDS[:3], seed=7)
    convert(src, out, "pt32", progress=False)
    mmap_store.pack(src, packed, progress=False)
    for copy in (out, packed):
        assert json.loads((copy / "splits.json").read_text())["seed"] == 7


def test_pack_and_convert_commands(prepared, tmp_path, capsys):
    from seg.commands.pack import main

    assert main(["pack", "--src", str(prepared), "--out", str(tmp_path / "train"), "--split", "train"]) == 0
    train = json.loads((prepared / "splits.json").read_text())["train"]
    assert mmap_store.PackedStore(tmp_path / "train").ids == train
    packed_splits = json.loads((tmp_path / "train" / "splits.json").read_text())
    assert packed_splits["train"] == train and packed_splits["val"] == [] and packed_splits["test"] == []
    from seg.train.loop import select_ids

    with pytest.raises(ValueError, match="validation split is empty \\(pack the whole prepared folder"):
        select_ids(tmp_path / "train", None)  # data splits cannot run on a packed folder: not its advice
    assert "cases packed" in capsys.readouterr().out
    assert main(["convert", "--src", str(tmp_path / "train"), "--out", str(tmp_path / "c"),
                 "--format", "compact"]) == 0
    assert storage_format(tmp_path / "c") == "compact"
    with pytest.raises(SystemExit, match="no split 'nope'"):
        main(["pack", "--src", str(prepared), "--out", str(tmp_path / "x"), "--split", "nope"])
    bad = write_prepared(tmp_path / "bad", ids=IDS[:2])
    (bad / f"{IDS[0]}.pt").write_bytes(b"truncated")
    assert main(["convert", "--src", str(bad), "--out", str(tmp_path / "bad_c"), "--format", "compact"]) == 1
    assert "1 case(s) failed" in capsys.readouterr().out
