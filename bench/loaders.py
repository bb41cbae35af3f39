"""The loader-variant registry: one small function per way of feeding batches.

A loader function takes a `LoaderRequest` and returns an iterable of batches, each a dict with
`image` [B,4,*S] and `label` [B,1,*S] tensors (on the CPU, or already on `request.device` for the
loaders that augment on the device). Register one with `@loader("name", "help")`; suites select
it with `loader = "name"` in a workload or the variant `loader:name`. Standard library at top level.

The storage comparison: `*-cpu-aug` loaders run the seed's MONAI augmentation in DataLoader
workers over pt32 / compact / mmap storage (the format alone changes); `pt32`, `compact`, `mmap`
read in workers and augment whole batches on the consuming device (seg.data.fast_loader);
`gpu-resident` holds the split on the device and uses no worker. A loader whose format differs
from the prepared data's gets a converted copy, made once per run under the run's cache folder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoaderRequest:
    data_dir: Path  # a prepared folder (segbench data prep)
    ids: list[str]  # labelled cases to read
    batch_size: int
    workers: int
    seed: int
    patch: list[int] | None  # random crop size, None: whole volumes
    train: bool  # with the seed's augmentations
    device: str  # where the batches are consumed
    cache_dir: Path | None = None  # where converted copies of the data go (None: the temp folder)


@dataclass
class LoaderDef:
    name: str
    help: str
    build: Callable[[LoaderRequest], Iterable[dict]]
    format: str | None = None  # storage read: pt32, compact, mmap; None: the prepared data's own
    uses_workers: bool = True  # False: the workers setting is ignored (reported as 0)


LOADERS: dict[str, LoaderDef] = {}


def loader(name: str, help: str, format: str | None = None, uses_workers: bool = True):
    def register(fn: Callable[[LoaderRequest], Iterable[dict]]):
        LOADERS[name] = LoaderDef(name, help, fn, format, uses_workers)
        return fn

    return register


def labelled_ids(data_dir: str | Path) -> list[str]:
    """The labelled cases of a prepared folder (its manifest's ok cases) or a packed one; ValueError
    when there are none."""
    from seg.data.formats import labelled_ids as readable_labelled

    ids = readable_labelled(data_dir)
    if not ids:
        raise ValueError(f"{data_dir}: no labelled case prepared without error")
    return ids


# bytes read from storage per voxel of a sample (4 image channels + the label)
BYTES_PER_VOXEL = {"pt32": 4 * 4 + 8, "compact": 4 * 2 + 1, "mmap": 4 * 2 + 1, "resident": 4 * 2 + 1}


def storage_fields(name: str, data_dir: str | Path) -> dict:
    """`format` the loader reads and `stored_bytes_per_sample` (one whole prepared case)."""
    from seg.data.formats import read_prep_config, storage_format

    try:
        config, own = read_prep_config(data_dir), storage_format(data_dir)
    except FileNotFoundError:
        config, own = {}, "pt32"
    fmt = LOADERS[name].format or own
    size = config.get("size")
    return {"format": fmt, "stored_bytes_per_sample": BYTES_PER_VOXEL[fmt] * size**3 if size else None}


def endless(batches: Iterable[dict]) -> Iterator[dict]:
    """Batches epoch after epoch (a DataLoader's sampler told the epoch, as training does). Loaders
    read on across epoch boundaries: a benchmark's few cases would otherwise make each epoch's
    restart of the workers a large part of the measured time."""
    from torch.utils.data import DataLoader

    from seg.data.loaders import endless_batches

    if hasattr(batches, "endless"):
        yield from batches.endless()
        return
    if isinstance(batches, DataLoader):
        yield from endless_batches(batches)
        return
    epoch = 0
    while True:
        sampler = getattr(batches, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from batches
        epoch += 1


def in_format(req: LoaderRequest, fmt: str) -> Path:
    """The request's data in storage `fmt`: the folder itself, or a copy converted once."""
    import tempfile

    from seg.data.formats import materialize

    cache = Path(req.cache_dir) if req.cache_dir else Path(tempfile.gettempdir()) / "segbench-formats"
    return materialize(req.data_dir, fmt, cache / "formats")


def _seed_pipeline(req: LoaderRequest, fmt: str | None = None, augment: bool = True) -> Iterable[dict]:
    """seg.data.loaders.build_loader (MONAI augmentation in workers) over storage `fmt` (None: the
    prepared folder as it is)."""
    from seg.data.loaders import build_loader

    return build_loader(
        req.data_dir if fmt is None else in_format(req, fmt),
        req.ids,
        req.batch_size,
        train=req.train and augment,
        workers=req.workers,
        seed=req.seed,
        patch=req.patch if augment else None,
        pin_memory=req.device == "cuda",
    )


def _device_aug(req: LoaderRequest, fmt: str | None = None, resident: bool = False) -> Iterable[dict]:
    """seg.data.fast_loader: workers read storage `fmt` (None: the prepared folder), the seed's
    augmentation runs batched on the consuming device; `resident` holds the split there instead."""
    from seg.data.fast_loader import build_fast_loader

    return build_fast_loader(
        req.data_dir if fmt is None else in_format(req, fmt),
        req.ids,
        req.batch_size,
        train=req.train,
        device=req.device,
        seed=req.seed,
        patch=req.patch,
        workers=0 if resident else req.workers,
        resident=resident,
        progress=False,
    )


loader("default", "seg.data.loaders.build_loader over the prepared .pt files (the seed's pipeline)")(
    _seed_pipeline
)
loader("no_augment", "the same files and DataLoader without the CPU augmentations (load only)")(
    functools.partial(_seed_pipeline, augment=False)
)
# The storage comparison: the same two pipelines over each format, only the storage read changes.
for _fmt, _storage in (
    ("pt32", "pt32 .pt files"),
    ("compact", "compact .pt files (fp16/uint8)"),
    ("mmap", "memory-mapped packed arrays"),
):
    loader(f"{_fmt}-cpu-aug", f"the seed's pipeline over {_storage}: MONAI augmentation in workers", _fmt)(
        functools.partial(_seed_pipeline, fmt=_fmt)
    )
    loader(_fmt, f"{_storage} read in workers, the seed's augmentation batched on the device", _fmt)(
        functools.partial(_device_aug, fmt=_fmt)
    )
loader(
    "gpu-resident",
    "the split held in device memory (pinned host memory when it does not fit), augmented on the device",
    "resident",
    uses_workers=False,
)(functools.partial(_device_aug, resident=True))
