"""Loaders that augment whole batches on the device: the fast input pipeline.

Two sources, one behaviour:
- `WorkerLoader`: DataLoader workers only read samples in their stored dtypes (float16/uint8 for
  compact and mmap: a third of the seed's bytes through shared and pinned memory); the batch then
  goes to the device and is augmented there.
- `ResidentLoader`: the split held once on the device (or in pinned host memory), see
  seg.data.device_dataset; no workers, no per-sample file reads.
Both produce batches ahead of use on a side stream (seg.data.prefetch) and yield
{"image": float32 [B,4,*S], "label": int64 [B,1,*S], "id": [str]} on `device`.

Sample order and augmentation are those of seg.data.loaders.build_loader for the same seed:
the same SeededSampler keys, and seg.data.batch_augment replays the seed pipeline's draws from
each sample's seed (same crops, flips and rotations; noise of the same σ, drawn on the device).
So results do not depend on the worker count or the process count; nor on the source format, except
that the resident copy holds images in float16 (pt32 sources: within float16's rounding, ~2e-4).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from seg.data.augment import check_batchable
from seg.data.batch_augment import augment_batch, draw_batch
from seg.data.device_dataset import DEFAULT_FRACTION, ResidentData
from seg.data.formats import open_reader, split_has_labels
from seg.data.loaders import RawDataset, _replicas, data_loader, endless_batches, make_sampler
from seg.data.prefetch import Prefetcher, resolve_device

DEFAULT_PREFETCH = 2


class _BatchFinisher:
    """What both loaders do to a batch on the device: augment (training) or cast (evaluation)."""

    def __init__(self, device: torch.device, train: bool, patch, fg_fraction: float = 0.0):
        self.device, self.train, self.patch, self.fg_fraction = device, train, patch, fg_fraction
        self.generator = torch.Generator(device=device) if train else None

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None, seeds: Sequence[int], ids) -> dict:
        if self.train:
            augs = draw_batch(seeds, image.shape[2:], self.patch, self.fg_fraction, label)
            image, label = augment_batch(image, label, augs, generator=self.generator)
        else:
            image, label = image.float(), None if label is None else label.long()
        batch = {"image": image, "id": list(ids)}
        if label is not None:
            batch["label"] = label
        return batch


class _PrefetchingLoader:
    """Iteration shared by both loaders: `_batches()` items of one epoch, `_produce(item)` a batch."""

    sampler: Any
    device: torch.device
    prefetch: int

    def __iter__(self) -> Iterator[dict]:
        """One epoch, the sampler's current one (call `loader.sampler.set_epoch(e)` first)."""
        return iter(Prefetcher(self._batches(), self._produce, self.device, self.prefetch))

    def endless(self, start_epoch: int = 0) -> Iterator[dict]:
        """Epoch after epoch from `start_epoch`, prefetching across epoch boundaries (no bubble
        at the start of each epoch). The sampler's epoch is set ahead of the consumer."""

        def items() -> Iterator:
            for epoch in itertools.count(start_epoch):
                if hasattr(self.sampler, "set_epoch"):
                    self.sampler.set_epoch(epoch)
                yield from self._batches()

        return iter(Prefetcher(items(), self._produce, self.device, self.prefetch))


class ResidentLoader(_PrefetchingLoader):
    """Batches of a ResidentData (see the module docstring). `loader.sampler.set_epoch(e)` each epoch."""

    def __init__(self, data: ResidentData, batch_size: int, *, train: bool, device: torch.device | str,
                 seed: int = 0, patch=None, world_size: int = 1, rank: int = 0,
                 prefetch: int = DEFAULT_PREFETCH, fg_fraction: float = 0.0):
        self.data, self.batch_size, self.device = data, batch_size, resolve_device(device)
        self.sampler = make_sampler(len(data.ids), train, seed, world_size, rank)
        self.prefetch = prefetch
        self.finish = _BatchFinisher(self.device, train, patch, fg_fraction)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def _batches(self) -> Iterator[list]:
        keys = list(self.sampler)
        for start in range(0, len(keys), self.batch_size):
            yield keys[start:start + self.batch_size]

    def _produce(self, keys: list) -> dict:
        indices = [k[0] if isinstance(k, tuple) else k for k in keys]
        seeds = [k[1] for k in keys if isinstance(k, tuple)]
        image, label = self.data.gather(indices, self.device)
        return self.finish(image, label, seeds, [self.data.ids[i] for i in indices])


class WorkerLoader(_PrefetchingLoader):
    """DataLoader workers reading stored dtypes, batches augmented on the device (module docstring)."""

    def __init__(self, data_dir: str | Path, ids: Sequence[str], batch_size: int, *, train: bool,
                 device: torch.device | str, seed: int = 0, patch=None, workers: int = 0,
                 world_size: int = 1, rank: int = 0, prefetch: int = DEFAULT_PREFETCH,
                 fg_fraction: float = 0.0):
        self.device = resolve_device(device)
        dataset = RawDataset(data_dir, ids)
        if dataset.ids:  # a batch mixing both would lose its labels at collation, or raise KeyError
            split_has_labels(dataset.reader, dataset.ids, data_dir)
        self.sampler = make_sampler(len(dataset), train, seed, world_size, rank)
        self.loader = data_loader(dataset, batch_size, self.sampler, workers, seed,
                                  pin_memory=self.device.type == "cuda")
        self.prefetch = prefetch
        self.finish = _BatchFinisher(self.device, train, patch, fg_fraction)

    def __len__(self) -> int:
        return len(self.loader)

    def _produce(self, batch: dict) -> dict:
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True) if "label" in batch else None
        seeds = batch["seed"].tolist() if "seed" in batch else []
        return self.finish(image, label, seeds, batch["id"])

    def _batches(self) -> Iterator[dict]:
        return iter(self.loader)

    def endless(self, start_epoch: int = 0) -> Iterator[dict]:
        # The workers, too, read on across epoch boundaries (the base class restarts them each epoch).
        return iter(Prefetcher(endless_batches(self.loader, start_epoch), self._produce, self.device,
                               self.prefetch))


def build_fast_loader(
    data_dir: str | Path,
    ids: Sequence[str],
    batch_size: int,
    *,
    train: bool,
    device: torch.device | str,
    seed: int = 0,
    patch=None,
    workers: int = 0,
    resident: bool = False,
    distributed: bool = False,
    fraction: float = DEFAULT_FRACTION,
    placement: str | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    progress: bool = True,
    fg_fraction: float = 0.0,
) -> ResidentLoader | WorkerLoader:
    """A loader over prepared (pt32/compact) or packed (mmap) cases `ids` whose batches arrive on
    `device` augmented (train) like build_loader's. `resident=True` holds the split in device
    memory (or pinned host memory when it takes more than `fraction` of the free device memory;
    `placement` forces one), else `workers` DataLoader processes read it. `fg_fraction`: foreground
    oversampling of the patches (seg.data.fg_crop), drawn as build_loader's. Under DDP
    (`distributed`) each rank gets its shard of the global order, as with build_loader."""
    world_size, rank = _replicas(distributed)
    device = resolve_device(device)
    common = dict(train=train, device=device, seed=seed, patch=patch, fg_fraction=fg_fraction,
                  world_size=world_size, rank=rank, prefetch=prefetch)
    if train and ids:  # before any case is read (a resident split may be gigabytes)
        check_batchable(patch, batch_size, open_reader(data_dir).spatial_shape(ids[0]))
    if resident:
        # every rank holds the whole split: its shard of the order changes every epoch
        data = ResidentData.load(data_dir, ids, device, fraction=fraction, placement=placement,
                                 progress=progress)
        return ResidentLoader(data, batch_size, **common)
    return WorkerLoader(data_dir, ids, batch_size, workers=workers, **common)
