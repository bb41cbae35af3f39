"""seg.data.loaders on tiny hand-made prepared folders (the contract's .pt format)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seg.data.fast_loader import build_fast_loader
from seg.data.loaders import PreparedDataset, SeededSampler, build_loader, sample_seed
from seg.data.splits import write_splits
from seg.data.store import save_case, write_json


def phantom(size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Nested spheres (edema 2 ⊃ necrosis 1 ⊃ enhancing 3 as a shell) at a random centre; each
    modality brightens a different label, plus noise. Prepared convention: labels 0..3."""
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).astype(np.float32)
    centre = rng.uniform(0.35, 0.65, 3) * size
    r = np.linalg.norm(grid - centre, axis=-1) / size
    label = np.zeros((size,) * 3, np.int64)
    label[r < 0.28] = 2
    label[r < 0.18] = 3
    label[r < 0.11] = 1
    brain = np.linalg.norm(grid - size / 2, axis=-1) < 0.48 * size
    image = np.zeros((4, size, size, size), np.float32)
    for channel, bright in enumerate((1, 3, 2, 2)):
        image[channel] = 0.3 * brain + 0.5 * (label == bright) + 0.1 * (label > 0)
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    return torch.from_numpy(np.clip(image, 0, 1)), torch.from_numpy(label[None])


def write_prepared(root: Path, n: int = 4, size: int = 16, fmt: str = "pt32", seed: int = 0) -> Path:
    """A prepared folder like `segbench data prep` writes: cases, manifest.json, splits.json."""
    rng = np.random.default_rng(seed)
    ids = [f"Case_{i:03d}" for i in range(n)]
    for case_id in ids:
        image, label = phantom(size, rng)
        save_case(root / f"{case_id}.pt", image, label, {"id": case_id}, fmt=fmt)
    config = {"size": size, "format": fmt}
    write_json(root / "manifest.json",
               {"config": config, "cases": [{"id": i, "status": "ok", "file": f"{i}.pt"} for i in ids]})
    write_splits(root, ids=ids)
    return root


@pytest.mark.parametrize("fmt", ["pt32", "compact"])
def test_dataset_reads_both_formats_as_float32_int64(tmp_path, fmt):
    write_prepared(tmp_path, n=2, size=8, fmt=fmt)
    sample = PreparedDataset(tmp_path, ["Case_000"])[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (4, 8, 8, 8)
    assert sample["label"].dtype == torch.int64 and sample["label"].shape == (1, 8, 8, 8)
    assert sample["id"] == "Case_000"
    assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 3}


def test_dataset_names_missing_and_corrupt_files(tmp_path):
    write_prepared(tmp_path, n=2, size=8)
    with pytest.raises(FileNotFoundError, match="Case_009.pt"):
        PreparedDataset(tmp_path, ["Case_000", "Case_009"])
    (tmp_path / "Case_001.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="Case_001.pt: cannot read prepared case"):
        PreparedDataset(tmp_path, ["Case_001"])[0]


def test_image_only_case_has_no_label(tmp_path):
    image, _ = phantom(8, np.random.default_rng(0))
    save_case(tmp_path / "Img.pt", image, None, {"id": "Img"})
    sample = PreparedDataset(tmp_path, ["Img"])[0]
    assert "label" not in sample and sample["image"].shape == (4, 8, 8, 8)


def _epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(b["id"], b["image"].clone(), b["label"].clone()) for b in loader]


def test_train_loader_is_reproducible_and_worker_independent(tmp_path):
    write_prepared(tmp_path, n=4, size=8)
    ids = json.loads((tmp_path / "splits.json").read_text())["train"] + ["Case_000"]
    in_process = build_loader(tmp_path, ids, 2, train=True, workers=0, seed=3)
    again = build_loader(tmp_path, ids, 2, train=True, workers=0, seed=3)
    with_workers = build_loader(tmp_path, ids, 2, train=True, workers=2, seed=3)
    a0, b0, w0 = (_epoch_batches(loader, 0) for loader in (in_process, again, with_workers))
    for x, y in ((a0, b0), (a0, w0)):
        assert [i for i, _, _ in x] == [i for i, _, _ in y]
        for (_, ix, lx), (_, iy, ly) in zip(x, y, strict=True):
            assert torch.equal(ix, iy) and torch.equal(lx, ly)
    # A new epoch: another order or other augmentations, and every case seen once per epoch.
    a1 = _epoch_batches(in_process, 1)
    assert any(not torch.equal(x[1], y[1]) for x, y in zip(a0, a1, strict=True))
    assert sorted(sum((list(i) for i, _, _ in a1), [])) == sorted(ids)


def test_sharded_sampler_unions_to_the_single_process_order(tmp_path):
    # The permutation and each sample's augmentation seed do not depend on the replica count.
    dataset = list(range(8))
    single = SeededSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=5)
    shards = [SeededSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=5) for r in range(2)]
    for sampler in (single, *shards):
        sampler.set_epoch(2)
    order = list(single)
    first, second = (list(s) for s in shards)
    interleaved = [key for pair in zip(first, second, strict=True) for key in pair]
    assert interleaved == order
    assert all(seed == sample_seed(5, 2, index) for index, seed in order)
    odd = [SeededSampler(list(range(7)), num_replicas=3, rank=r, shuffle=True, seed=5) for r in range(3)]
    for sampler in odd:  # padded to 9 with the epoch's first cases, each shard 3 long
        sampler.set_epoch(2)
    keys = [key for triple in zip(*(list(s) for s in odd), strict=True) for key in triple]
    assert sorted({i for i, _ in keys}) == list(range(7)) and keys[7:] == keys[:2]


def test_seed_replicates_do_not_share_their_orders_shifted_by_an_epoch():
    """Orders hash (seed, epoch): DistributedSampler's seed + epoch gave seed 0's second epoch the
    order of seed 1's first."""
    dataset = list(range(16))
    orders = {}
    for seed in (0, 1):
        for epoch in (0, 1):
            sampler = SeededSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            orders[seed, epoch] = [index for index, _ in sampler]
    assert orders[0, 1] != orders[1, 0] and orders[0, 0] != orders[0, 1]
    assert all(sorted(o) == dataset for o in orders.values())


def test_validation_loader_keeps_order_without_augmentation(tmp_path):
    write_prepared(tmp_path, n=3, size=8)
    ids = ["Case_000", "Case_001", "Case_002"]
    loader = build_loader(tmp_path, ids, 1, train=False)
    assert [b["id"][0] for b in loader] == ids
    image = next(iter(loader))["image"]
    assert torch.equal(image[0], PreparedDataset(tmp_path, ids)[0]["image"])  # no augmentation


def test_a_training_split_mixing_labelled_and_image_only_cases_is_refused(tmp_path):
    # The augmentation is built for one kind; an image-only case first used to leave every label after
    # it unflipped and uncropped beside its augmented image, with no error.
    write_prepared(tmp_path, n=3, size=8)
    save_case(tmp_path / "Case_000.pt", torch.rand(4, 8, 8, 8), None, {"id": "Case_000"})
    ids = ["Case_000", "Case_001", "Case_002"]
    for order in (ids, ids[::-1]):
        with pytest.raises(ValueError, match=r"mixes labelled and image-only cases \(1 without a label, "
                                             r"e.g. Case_000\)"):
            build_loader(tmp_path, order, 1, train=True)
        for resident in (False, True):  # the device pipeline's workers and its resident store alike
            with pytest.raises(ValueError, match="mixes labelled and image-only cases"):
                build_fast_loader(tmp_path, order, 1, train=True, device="cpu", resident=resident,
                                  progress=False)
    only_images = build_loader(tmp_path, ["Case_000"], 1, train=True, patch=4)
    assert next(iter(only_images))["image"].shape == (1, 4, 4, 4, 4)


def test_a_patch_the_rotation_cannot_batch_is_refused_when_the_loader_is_built(tmp_path):
    # rot90 swaps spatial axes 0 and 1 for about half the samples: (8, 4, 4) and (4, 8, 4) patches
    # cannot share a batch, found before only at the first batch mixing them
    write_prepared(tmp_path, n=3, size=8)
    ids = ["Case_000", "Case_001", "Case_002"]
    with pytest.raises(ValueError, match=r"patch \(8, 4, 4\) \(volumes \(8, 8, 8\)\): a batch of 2 needs"):
        build_loader(tmp_path, ids, 2, train=True, patch=(8, 4, 4))
    # judged on the patch as the crop clips it to the volume: (32, 8, 8) is an 8³ crop here
    clipped = next(iter(build_loader(tmp_path, ids, 2, train=True, patch=(32, 8, 8))))
    assert clipped["image"].shape[2:] == (8, 8, 8)
    fast = build_fast_loader(tmp_path, ids, 2, train=True, device="cpu", patch=(32, 8, 8), progress=False)
    assert next(iter(fast))["image"].shape[2:] == (8, 8, 8)
    with pytest.raises(ValueError, match="needs equal sizes"):
        build_fast_loader(tmp_path, ids, 2, train=True, device="cpu", patch=(8, 4, 4), progress=False)
    import seg.data.fast_loader

    def never(*args, **kwargs):
        raise AssertionError("a refused configuration loaded the whole split first")

    with pytest.MonkeyPatch.context() as mp:  # refused before a resident split is read (maybe GBs)
        mp.setattr(seg.data.fast_loader.ResidentData, "load", never)
        with pytest.raises(ValueError, match="needs equal sizes"):
            build_fast_loader(tmp_path, ids, 2, train=True, device="cpu", patch=(8, 4, 4), resident=True)
    batch = next(iter(build_loader(tmp_path, ids, 2, train=True, patch=(4, 4, 8))))
    assert batch["image"].shape[2:] == (4, 4, 8)
    assert next(iter(build_loader(tmp_path, ids, 1, train=True, patch=(8, 4, 4))))["image"].shape[0] == 1
    assert list(build_loader(tmp_path, [], 2, train=True)) == []  # no batch (was a ZeroDivisionError)


def test_workers_augment_plain_indices_differently(tmp_path):
    # Without SeededSampler's keys the transform draws from its own generator, copied into each worker.
    from torch.utils.data import DataLoader

    from seg.data.augment import seed_train_transforms
    from seg.data.loaders import _seed_worker

    image, label = torch.rand(4, 8, 8, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 8, 8, 8)
    ids = [f"s{i}" for i in range(8)]
    for case_id in ids:
        save_case(tmp_path / f"{case_id}.pt", image, label.long(), {"id": case_id})
    dataset = PreparedDataset(tmp_path, ids, transform=seed_train_transforms(4))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=_seed_worker,
                        generator=torch.Generator().manual_seed(0))
    out = [b["image"][0] for b in loader]  # worker 0 reads samples 0, 2, 4, 6; worker 1 the others
    assert not any(torch.equal(out[2 * k], out[2 * k + 1]) for k in range(4))


@pytest.mark.parametrize("fg_fraction", [0.0, 0.5])
def test_compact_samples_are_augmented_on_their_stored_dtypes_to_the_same_values(tmp_path, fg_fraction):
    """The augmentation runs on float16/uint8 and casts after the crop: each sample equals the one
    augmented from the float32/int64 cast of the whole case (the order of the old loader)."""
    from seg.data.augment import seed_train_transforms

    write_prepared(tmp_path, n=2, size=16, fmt="compact")
    ids = ["Case_000", "Case_001"]
    dataset = PreparedDataset(tmp_path, ids, transform=seed_train_transforms(8, fg_fraction=fg_fraction))
    reference = seed_train_transforms(8, fg_fraction=fg_fraction)
    for seed in range(12):
        sample = dataset[(seed % 2, seed)]
        raw = dataset.reader.read(ids[seed % 2])
        assert raw["image"].dtype == torch.float16  # stored compact: the cast really moved
        reference.set_random_state(seed=seed)
        expected = reference({"image": raw["image"].float(), "label": raw["label"].long()})
        assert sample["image"].dtype == torch.float32 and sample["label"].dtype == torch.int64
        assert torch.equal(sample["image"], expected["image"].as_tensor())
        assert torch.equal(sample["label"], expected["label"].as_tensor())
