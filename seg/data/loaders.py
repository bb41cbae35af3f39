"""Datasets and loaders over a prepared folder (`segbench data prep` output).

`PreparedDataset` reads one case per sample (a `<case_id>.pt` in pt32 or compact, or a row of a
packed mmap folder, see seg.data.formats) and returns float32
image / int64 label, the dtypes the models and the loss consume. `build_loader` wraps it in a
torch DataLoader with the seed's augmentation for training.

Sample order and augmentation are functions of (seed, epoch, sample index) only: the sampler
yields `(index, sample_seed)` keys and the dataset seeds the transform chain with `sample_seed`
before applying it. So a run gives the same batches whatever the number of workers, resuming at
an epoch boundary replays exactly, and a DDP run over K processes sees the same global batches
(and the same augmented samples) as one process with K times the batch.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from seg.data.augment import check_batchable, seed_train_transforms
from seg.data.formats import open_reader, split_has_labels

ORDER_INDEX = 2**63  # sample_seed's index for an epoch's order: no sample has it


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, independent of worker and process layout."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def _plain(x: Any) -> torch.Tensor:
    # MONAI transforms return MetaTensors; the training loop and default collate want plain tensors.
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class RawDataset(Dataset):
    """Samples as stored (no cast, no augmentation) plus the sampler's seed: what a worker sends."""

    def __init__(self, data_dir: str | Path, ids: Sequence[str]):
        self.data_dir, self.ids = Path(data_dir), list(ids)
        self.reader = open_reader(self.data_dir)
        missing = self.reader.missing(self.ids)
        if missing:
            raise FileNotFoundError(
                f"{self.data_dir}: {len(missing)} prepared case(s) missing, e.g. {missing[0]} "
                "(run `segbench data prep` for this folder, or check the split)"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        case = self.reader.read(self.ids[index])
        sample = {"image": case["image"], "id": self.ids[index]}
        if "label" in case:
            sample["label"] = case["label"]
        if seed is not None:
            sample["seed"] = seed
        return sample


class PreparedDataset(RawDataset):
    """Prepared cases `data_dir/<id>.pt` -> {"image": float32 [4,S,S,S], "label": int64 [1,S,S,S]
    (labelled cases only), "id": str}.

    An index may be an int or an `(int, seed)` pair from `SeededSampler`; with a seed and a
    random `transform`, the transform is reseeded first so the sample is reproducible.
    """

    def __init__(self, data_dir: str | Path, ids: Sequence[str], transform=None):
        super().__init__(data_dir, ids)
        self.transform = transform

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        raw = super().__getitem__(key)
        seed, case_id = raw.get("seed"), raw["id"]
        sample = {k: raw[k] for k in ("image", "label") if k in raw}
        if self.transform is not None:
            # on the stored dtypes (float16/uint8 for compact and packed data): crops, flips and
            # rotations copy values exactly and the noise works in float32, so casting after the
            # crop gives the same sample without converting the whole volume first
            if seed is not None and hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(seed=seed)
            sample = self.transform(sample)
        sample = {k: _plain(v) for k, v in sample.items()}
        sample["image"] = sample["image"].float()
        if "label" in sample:
            sample["label"] = sample["label"].long()
        sample["id"] = case_id
        return sample


class SeededSampler(DistributedSampler):
    """PyTorch's DistributedSampler (a seeded permutation per epoch, padded to a multiple of the
    replica count, shard `rank::num_replicas`) that yields `(index, sample_seed)` pairs.

    The permutation depends only on (seed, epoch), not on the replica count, so the union of the
    ranks' k-th batches is the single-process k-th global batch; except where the case count is not
    a multiple of the replica count: the padding repeats the epoch's first cases at its end, so they
    appear in the first global batch and again, augmented alike, in the last (PyTorch's padding,
    kept so every rank steps the same number of times). Works without a process group when
    `num_replicas` and `rank` are given (1 and 0 for a single process).
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # DistributedSampler's order, seeded by a hash of (seed, epoch): its own `seed + epoch` gave
        # seed s at epoch e+1 the order of seed s+1 at epoch e (seed replicates shared their orders)
        g = torch.Generator()
        g.manual_seed(sample_seed(self.seed, self.epoch, ORDER_INDEX))
        n = len(self.dataset)
        indices = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        if self.drop_last:
            indices = indices[: self.total_size]
        elif indices:  # pad with the epoch's first cases, as PyTorch does (none to pad with: no batch)
            indices += (indices * math.ceil(self.total_size / len(indices)))[: self.total_size - len(indices)]
        for index in indices[self.rank : self.total_size : self.num_replicas]:
            yield index, sample_seed(self.seed, self.epoch, index)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}


def _seed_worker(worker_id: int) -> None:
    # SeededSampler's keys reseed the augmentation per sample; this seeds anything else a worker
    # draws from, and a MONAI transform's own generator for plain int indices (every worker gets a
    # copy of the same one, so their samples would be augmented alike).
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=worker_seed)


def _replicas(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 1, 0
    import torch.distributed as dist

    return dist.get_world_size(), dist.get_rank()


def build_loader(
    data_dir: str | Path,
    ids: Sequence[str],
    batch_size: int,
    *,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    patch: int | Sequence[int] | None = None,
    distributed: bool = False,
    pin_memory: bool | None = None,
    fg_fraction: float = 0.0,
) -> DataLoader:
    """A DataLoader over prepared cases `ids`.

    train=True: the seed's augmentation (random crop to `patch` first, when given), a shuffled
    `SeededSampler` (call `loader.sampler.set_epoch(epoch)` each epoch), `batch_size` per process.
    train=False: no augmentation, fixed order; when `distributed`, rank r reads cases r, r+K, ...
    without padding, so reducing sums over ranks counts every case once.
    `pin_memory` defaults to "CUDA is available". Workers persist across epochs. `fg_fraction`: the
    share of patches centred on the foreground (seg.data.fg_crop; 0, the seed's: uniform crops).
    """
    world_size, rank = _replicas(distributed)
    if train:
        dataset = PreparedDataset(data_dir, ids, transform=None)
        if dataset.ids:
            check_batchable(patch, batch_size, dataset.reader.spatial_shape(dataset.ids[0]))
        labelled = split_has_labels(dataset.reader, dataset.ids, data_dir) if dataset.ids else True
        dataset.transform = seed_train_transforms(patch, keys=("image", "label") if labelled else ("image",),
                                                  fg_fraction=fg_fraction)
    else:
        dataset = PreparedDataset(data_dir, ids)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    sampler = make_sampler(len(dataset), train, seed, world_size, rank)
    return data_loader(dataset, batch_size, sampler, workers, seed, pin_memory)


class EpochBatches:
    """A batch sampler over `sampler`'s epochs one after another from `start_epoch`, each epoch
    batched as a DataLoader batches it (no batch spans two epochs).

    A DataLoader built on it keeps its workers reading across epoch boundaries; a fresh iterator
    per epoch stops them at each epoch's end and waits for a whole sample read before its first
    batch, which on a small dataset (an 8-case benchmark with 8+ workers) is most of the time."""

    def __init__(self, sampler, batch_size: int, start_epoch: int = 0):
        self.sampler, self.batch_size, self.start_epoch = sampler, batch_size, start_epoch

    def __iter__(self) -> Iterator[list]:
        for epoch in itertools.count(self.start_epoch):
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            keys = list(self.sampler)
            for start in range(0, len(keys), self.batch_size):
                yield keys[start:start + self.batch_size]


def endless_batches(loader: DataLoader, start_epoch: int = 0) -> Iterator[dict]:
    """`loader`'s batches epoch after epoch, the same batches as `set_epoch(e)` + `iter(loader)` for
    each e, with its workers prefetching across epoch boundaries (see EpochBatches)."""
    workers = loader.num_workers
    return iter(DataLoader(
        loader.dataset,
        batch_sampler=EpochBatches(loader.sampler, loader.batch_size, start_epoch),
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
    ))


def make_sampler(n: int, train: bool, seed: int, world_size: int, rank: int) -> SeededSampler | list[int]:
    """train: a shuffled `SeededSampler` over `n` samples; else this rank's cases r, r+K, ... in
    order, without padding (sums over ranks then count every case once)."""
    if train:
        return SeededSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return list(range(rank, n, world_size))


def data_loader(dataset: Dataset, batch_size: int, sampler, workers: int, seed: int,
                pin_memory: bool) -> DataLoader:
    """The DataLoader settings every loader here shares: workers persist across epochs and are
    seeded by `_seed_worker`; the loader's own generator is seeded with `seed`."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
