"""The fast input pipeline on CPU tensors: the fast loaders (identical samples whatever the storage),
the resident dataset and the prefetcher."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from prepared_folders import FP16_TOL, IDS, write_prepared

from seg.data.batch_augment import draw_batch
from seg.data.device_dataset import ResidentData, choose_placement, copy_rows
from seg.data.fast_loader import ResidentLoader, build_fast_loader
from seg.data.formats import open_reader
from seg.data.loaders import build_loader, endless_batches
from seg.data.prefetch import Prefetcher


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
