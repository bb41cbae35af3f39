"""The loader-variant registry: one small function per way of feeding batches.

A loader function takes a `LoaderRequest` and returns an iterable of batches, each a dict with
`image` [B,4,*S] and `label` [B,1,*S] tensors (on the CPU, or already on `request.device` for a
GPU-resident loader). Register one with `@loader("name", "help")`; suites select it with
`loader = "name"` in a workload or the variant `loader:name`. Standard library at top level.
"""

from __future__ import annotations

import json
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


@dataclass
class LoaderDef:
    name: str
    help: str
    build: Callable[[LoaderRequest], Iterable[dict]]


LOADERS: dict[str, LoaderDef] = {}


def loader(name: str, help: str):
    def register(fn: Callable[[LoaderRequest], Iterable[dict]]):
        LOADERS[name] = LoaderDef(name, help, fn)
        return fn

    return register


def labelled_ids(data_dir: str | Path) -> list[str]:
    """The labelled cases a prepared folder's manifest lists as ok."""
    path = Path(data_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{path}: cannot read the prepared data's manifest ({err})") from None
    ids = [c["id"] for c in manifest["cases"] if c.get("status") == "ok" and c.get("has_label", True)]
    if not ids:
        raise ValueError(f"{path}: no labelled case prepared without error")
    return ids


def endless(batches: Iterable[dict]) -> Iterator[dict]:
    """Batches epoch after epoch (a DataLoader's sampler told the epoch, as training does)."""
    epoch = 0
    while True:
        sampler = getattr(batches, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from batches
        epoch += 1


@loader("default", "seg.data.loaders.build_loader over the prepared .pt files (the seed's pipeline)")
def _default(req: LoaderRequest) -> Iterable[dict]:
    from seg.data.loaders import build_loader

    return build_loader(
        req.data_dir,
        req.ids,
        req.batch_size,
        train=req.train,
        workers=req.workers,
        seed=req.seed,
        patch=req.patch,
        pin_memory=req.device == "cuda",
    )


@loader("no_augment", "the same files and DataLoader without the CPU augmentations (load only)")
def _no_augment(req: LoaderRequest) -> Iterable[dict]:
    from seg.data.loaders import build_loader

    return build_loader(
        req.data_dir,
        req.ids,
        req.batch_size,
        train=False,
        workers=req.workers,
        seed=req.seed,
        pin_memory=req.device == "cuda",
    )
