"""The fast input pipeline on CPU tensors: mmap packing, format conversion, the fast loaders
(identical samples whatever the storage), the resident dataset and the prefetcher."""

from __future__ import annotations

import json
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from seg.data import mmap_store
from seg.data.batch_augment import draw_batch
from seg.data.device_dataset import ResidentData, choose_placement, copy_rows
from seg.data.fast_loader import ResidentLoader, build_fast_loader
from seg.data.formats import convert, materialize, open_reader, storage_format
from seg.data.loaders import build_loader, endless_batches
from seg.data.prefetch import Prefetcher
from seg.data.splits import write_splits
from seg.data.store import save_case, write_json

IDS = [f"Case_{i:03d}" for i in range(5)]
FP16_TOL = 1e-3  # values in [0,1] (+ noise): float16 keeps ~11 bits


def write_prepared(root: Path, size: int = 10, fmt: str = "pt32", ids=IDS) -> Path:
    """A prepared folder like `segbench data prep` writes (random image, labels 0..3)."""
    rng = np.random.default_rng(0)
    for case_id in ids:
        image = torch.from_numpy(rng.random((4, size, size, size), dtype=np.float32))
        label = torch.from_numpy(rng.integers(0, 4, (1, size, size, size)))
        meta = {"id": case_id, "affine": np.eye(4).tolist()}
        save_case(root / f"{case_id}.pt", image, label, meta, fmt=fmt)
    write_json(root / "manifest.json", {"config": {"size": size, "format": fmt},
                                        "cases": [{"id": i, "status": "ok", "file": f"{i}.pt"} for i in ids]})
    write_splits(root, ids=list(ids))
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def formats(prepared, tmp_path_factory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("formats")
    return {fmt: materialize(prepared, fmt, cache, progress=False) for fmt in ("pt32", "compact", "mmap")}


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
    from seg.data.splits import write_splits

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


def _epochs(loader, epochs=(0, 1)) -> list[tuple[list, torch.Tensor, torch.Tensor]]:
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out += [(list(b["id"]), b["image"], b["label"]) for b in loader]
    return out


def _same(a, b, atol=FP16_TOL) -> None:
    assert [ids for ids, _, _ in a] == [ids for ids, _, _ in b]
    for (_, ia, la), (_, ib, lb) in zip(a, b, strict=True):
        assert torch.equal(la, lb)
        assert torch.allclose(ia, ib, atol=atol)


def test_fast_loaders_give_the_same_samples_whatever_the_storage(formats):
    kwargs = dict(train=True, device="cpu", seed=4, patch=8, progress=False)
    ref = _epochs(build_fast_loader(formats["pt32"], IDS, 2, **kwargs))
    assert ref[0][1].shape == (2, 4, 8, 8, 8) and ref[0][1].dtype == torch.float32
    assert ref[0][2].dtype == torch.int64
    for fmt in ("compact", "mmap"):
        _same(ref, _epochs(build_fast_loader(formats[fmt], IDS, 2, **kwargs)))
    _same(ref, _epochs(build_fast_loader(formats["mmap"], IDS, 2, workers=2, **kwargs)))
    _same(ref, _epochs(build_fast_loader(formats["compact"], IDS, 2, resident=True, prefetch=0, **kwargs)))


@pytest.mark.parametrize("fg_fraction", [0.0, 0.5])
def test_fast_loader_matches_the_seed_loader_sample_for_sample(formats, fg_fraction):
    # The seed pipeline (MONAI on the CPU) and the batched one agree on the order, the crops, flips
    # and rotations (labels equal) and on the noise-free samples; noise values are each their own.
    # With foreground oversampling too: the crop's draws depend on the label, on either side.
    seed_batches = _epochs(build_loader(formats["pt32"], IDS, 2, train=True, seed=4, patch=8,
                                        fg_fraction=fg_fraction))
    fast = build_fast_loader(formats["mmap"], IDS, 2, train=True, device="cpu", seed=4, patch=8,
                             fg_fraction=fg_fraction)
    fast_batches = _epochs(fast)
    keys = []
    for epoch in (0, 1):
        fast.sampler.set_epoch(epoch)
        keys += list(fast.sampler)
    augs = iter(draw_batch([s for _, s in keys], (10, 10, 10), patch=8))
    noisy = 0
    for (ids_a, ia, la), (ids_b, ib, lb) in zip(seed_batches, fast_batches, strict=True):
        assert ids_a == ids_b and torch.equal(la, lb)
        for j in range(len(ids_a)):
            if next(augs).noise_std == 0:
                assert torch.allclose(ia[j], ib[j], atol=FP16_TOL)
            else:
                noisy += 1
    assert 0 < noisy < len(keys)  # both kinds seen (fixed seed: not luck-dependent)


def test_seed_pipeline_reads_every_storage_alike(formats):
    ref = _epochs(build_loader(formats["pt32"], IDS, 2, train=True, seed=9))
    for fmt in ("compact", "mmap"):
        _same(ref, _epochs(build_loader(formats[fmt], IDS, 2, train=True, seed=9)))


def test_resident_data_serves_the_right_rows(formats):
    data = ResidentData.load(formats["mmap"], IDS, "cpu", progress=False)
    assert data.placement == "host" == choose_placement(1, torch.device("cpu"))
    assert data.images.dtype == torch.float16 and data.labels.dtype == torch.uint8
    assert data.nbytes == 5 * 1000 * (4 * 2 + 1)
    image, label = data.gather([3, 0, 3], torch.device("cpu"))
    reader = open_reader(formats["pt32"])
    for j, i in enumerate([3, 0, 3]):
        case = reader.read(IDS[i])
        assert torch.allclose(image[j].float(), case["image"], atol=FP16_TOL)
        assert torch.equal(label[j].long(), case["label"])
    # the pinned-host path's row copies (asynchronous DMA on CUDA) give the same batch
    assert torch.equal(copy_rows(data.images, [3, 0, 3], torch.device("cpu")), image)


def test_resident_evaluation_order_and_shards(formats):
    data = ResidentData.load(formats["compact"], IDS, "cpu", progress=False)
    val = ResidentLoader(data, 2, train=False, device="cpu")
    batches = list(val)
    assert [b["id"] for b in batches] == [IDS[:2], IDS[2:4], IDS[4:]] and len(val) == 3
    case_1 = open_reader(formats["pt32"]).read(IDS[1])
    assert torch.allclose(batches[0]["image"][1], case_1["image"], atol=FP16_TOL)
    single = ResidentLoader(data, 1, train=True, device="cpu", seed=2)
    shards = [ResidentLoader(data, 1, train=True, device="cpu", seed=2, world_size=2, rank=r) for r in (0, 1)]
    one = [b["id"][0] for b in single]
    two = [[b["id"][0] for b in s] for s in shards]
    assert one[:4] == [x for pair in zip(*two, strict=False) for x in pair][:4]


@pytest.mark.parametrize("resident, workers", [(True, 0), (False, 0), (False, 2)])
def test_endless_crosses_epochs_like_set_epoch(formats, resident, workers):
    kwargs = dict(train=True, device="cpu", seed=1, progress=False, resident=resident, workers=workers)
    per_epoch = _epochs(build_fast_loader(formats["mmap"], IDS, 2, **kwargs), epochs=(0, 1, 2))
    it = build_fast_loader(formats["mmap"], IDS, 2, **kwargs).endless()
    _same(per_epoch, [(b["id"], b["image"], b["label"]) for b in (next(it) for _ in range(len(per_epoch)))])


@pytest.mark.parametrize("workers", [0, 2])
def test_endless_batches_of_a_dataloader_are_its_epochs(formats, workers):
    # 5 cases in batches of 2: each epoch ends on a short batch, which must not borrow from the next.
    per_epoch = _epochs(build_loader(formats["pt32"], IDS, 2, train=True, seed=5, patch=8, workers=workers),
                        epochs=(0, 1, 2))
    it = endless_batches(build_loader(formats["pt32"], IDS, 2, train=True, seed=5, patch=8, workers=workers))
    got = [next(it) for _ in range(len(per_epoch))]
    assert [len(b["id"]) for b in got] == [2, 2, 1] * 3
    _same(per_epoch, [(b["id"], b["image"], b["label"]) for b in got], atol=0)


def test_prefetcher_keeps_order_bounds_depth_and_reports_errors():
    produced, consumed = [], []

    def produce(i):
        produced.append(i)
        return {"x": torch.tensor(i)}

    prefetcher = Prefetcher(range(12), produce, "cpu", depth=2)
    for batch in prefetcher:
        time.sleep(0.01)  # a slow consumer: the producer runs ahead, but at most depth + 1
        assert len(produced) - len(consumed) <= 2 + 2
        consumed.append(int(batch["x"]))
    assert consumed == list(range(12))

    def fail(i):
        if i == 3:
            raise OSError("disk gone")
        return {"x": torch.tensor(i)}

    with pytest.raises(OSError, match="disk gone"):
        list(Prefetcher(range(6), fail, "cpu", depth=2))


def test_prefetcher_thread_ends_when_the_consumer_stops():
    before = threading.active_count()
    it = iter(Prefetcher(iter(range(10**6)), lambda i: {"x": torch.tensor(i)}, "cpu", depth=2))
    next(it)
    it.close()  # the consumer walks away mid-epoch: the producer is joined
    assert threading.active_count() == before


def test_a_process_left_with_an_open_prefetcher_exits_cleanly():
    """A benchmark's endless iterator is never closed: at exit the producer, busy in a torch op, is
    stopped before the interpreter kills it (which aborted the process: exit 134)."""
    import subprocess
    import sys

    code = ("import itertools, torch\nfrom seg.data.prefetch import Prefetcher\n"
            "it = iter(Prefetcher(itertools.count(), lambda i: torch.randn(2_000_000).sort()[0][:4], 'cpu', "
            "depth=1))\nnext(it)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]


def test_an_epoch_cut_short_leaves_the_next_one_intact(formats):
    # Training with max_steps_per_epoch leaves an epoch early; the persistent workers' next epoch
    # must be the one a fresh loader gives.
    kwargs = dict(train=True, device="cpu", seed=6, workers=2, progress=False)
    loader = build_fast_loader(formats["mmap"], IDS, 2, **kwargs)
    loader.sampler.set_epoch(0)
    for _ in loader:
        break
    fresh = build_fast_loader(formats["mmap"], IDS, 2, **kwargs)
    _same(_epochs(fresh, epochs=(1,)), _epochs(loader, epochs=(1,)))


@pytest.mark.gpu
@pytest.mark.parametrize("placement", ["device", "pinned"])
def test_cuda_placements_serve_the_cpu_batches(formats, placement):
    kwargs = dict(train=True, seed=4, patch=8, progress=False)
    cpu = _epochs(build_fast_loader(formats["mmap"], IDS, 2, device="cpu", resident=True, **kwargs))
    cuda = build_fast_loader(formats["mmap"], IDS, 2, device="cuda", resident=True, placement=placement,
                             **kwargs)
    assert cuda.data.placement == placement
    got = _epochs(cuda)
    # the same samples and geometry; noise comes from the CUDA generator, so compare labels and ids
    assert [ids for ids, _, _ in got] == [ids for ids, _, _ in cpu]
    for (_, ia, la), (_, _, lb) in zip(got, cpu, strict=True):
        assert ia.is_cuda and torch.equal(la.cpu(), lb)


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


@pytest.mark.gpu
def test_pinned_store_is_page_locked_at_its_size_and_released():
    from seg.data.device_dataset import pinned_empty

    for _ in range(2):  # the second registration reuses freed addresses: unregistered on free
        t = pinned_empty((3, 1000, 1000), torch.float16)
        assert t.is_pinned() and t.shape == (3, 1000, 1000)
        t.fill_(1)
        assert float(t.cuda(non_blocking=True).float().sum()) == 3e6
        del t


def test_a_resident_split_is_placed_by_its_true_size_and_read_ahead_reaches_every_case(tmp_path,
                                                                                     monkeypatch):
    from seg.data import device_dataset

    ids = [f"Case_{i:03d}" for i in range(11)]  # more than read-ahead's window (2 x READ_THREADS)
    data_dir = write_prepared(tmp_path / "p", size=4, fmt="compact", ids=ids)
    asked = {}
    real = device_dataset.choose_placement

    def spy(nbytes, device, fraction=device_dataset.DEFAULT_FRACTION):
        asked["nbytes"] = nbytes
        return real(nbytes, device, fraction)

    monkeypatch.setattr(device_dataset, "choose_placement", spy)
    data = ResidentData.load(data_dir, ids, "cpu", progress=False)
    assert data.images.shape[0] == 11
    assert asked["nbytes"] == data.nbytes == 11 * 4**3 * (2 * 4 + 1)  # fp16 images, uint8 labels
