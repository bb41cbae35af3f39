"""A prepared split held in memory once: on the GPU when it fits, else in pinned host memory.

`ResidentData.load(data_dir, ids, device)` reads every case (any prepared format) into one
float16 image tensor [N,4,S,S,S] and one uint8 label tensor [N,1,S,S,S]. Placement:
- "device": on the CUDA device, when the split takes at most `fraction` of its free memory
  (`torch.cuda.mem_get_info`); a batch is then an index_select on the device;
- "pinned": otherwise, in page-locked host memory (registered with the driver at its exact size,
  see `pinned_empty`); a batch is copied row by row to the device
  with non_blocking copies (true DMA from pinned memory, run ahead on a side stream by
  seg.data.prefetch.Prefetcher), no host-side gather;
- "host": on a CPU run, plain host memory (the same API; batches are index_selects).
All 1,251 BraTS 2021 cases at 128³ take ~22 GB in this form (fp16 image, uint8 label).
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from seg.data.formats import open_reader, split_has_labels

PLACEMENTS = ("device", "pinned", "host")
READ_THREADS = 4
DEFAULT_FRACTION = 0.5  # of free device memory; the model, activations and prefetched batches need the rest


def choose_placement(nbytes: int, device: torch.device, fraction: float = DEFAULT_FRACTION) -> str:
    """Where a split of `nbytes` goes for a run on `device` (see the module docstring)."""
    if device.type != "cuda":
        return "host"
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return "device" if nbytes <= fraction * free_bytes else "pinned"


def pinned_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A page-locked host tensor of exactly its size: a plain allocation registered with the CUDA
    driver. (`pin_memory=True` goes through PyTorch's caching host allocator, which rounds a block
    up to a power of two: a 22 GB split would pin 32 GB.) Unregistered when the tensor is freed,
    so a later registration of the same addresses does not fail."""
    tensor = torch.empty(tuple(shape), dtype=dtype)
    nbytes = tensor.numel() * tensor.element_size()
    cudart = torch.cuda.cudart()
    status = int(cudart.cudaHostRegister(tensor.data_ptr(), nbytes, 0))
    if status != 0:
        raise RuntimeError(f"cannot page-lock {nbytes / 1e9:.1f} GB of host memory for the split "
                           f"(cudaHostRegister status {status}); check `ulimit -l`")
    weakref.finalize(tensor, cudart.cudaHostUnregister, tensor.data_ptr())
    return tensor


def _empty(shape: Sequence[int], dtype: torch.dtype, placement: str, device: torch.device) -> torch.Tensor:
    if placement == "device":
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    if placement == "pinned":
        return pinned_empty(shape, dtype)
    return torch.empty(tuple(shape), dtype=dtype)


def copy_rows(src: torch.Tensor, indices: Sequence[int], device: torch.device) -> torch.Tensor:
    """Rows `indices` of `src` as one new tensor on `device`, one copy per row. From pinned host
    memory each copy is an asynchronous DMA on the current stream (the rows are contiguous, so no
    staging buffer and no host-side gather); the source stays alive as long as the store does."""
    out = torch.empty((len(indices), *src.shape[1:]), dtype=src.dtype, device=device)
    for j, i in enumerate(indices):
        out[j].copy_(src[i], non_blocking=True)
    return out


def _read_ahead(reader, ids: Sequence[str], threads: int = READ_THREADS) -> Iterator[dict]:
    """reader.read(id) for `ids` in order, with up to 2 * `threads` reads in flight (file reads
    and decompression overlap; memory stays bounded)."""
    with ThreadPoolExecutor(threads) as pool:
        todo = iter(ids)
        pending = deque(pool.submit(reader.read, i) for i in itertools.islice(todo, 2 * threads))
        while pending:
            case = pending.popleft().result()
            for case_id in itertools.islice(todo, 1):
                pending.append(pool.submit(reader.read, case_id))
            yield case


@dataclass
class ResidentData:
    ids: list[str]
    images: torch.Tensor  # [N,4,S,S,S] float16
    labels: torch.Tensor | None  # [N,1,S,S,S] uint8; None for image-only cases
    placement: str  # one of PLACEMENTS

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.images, self.labels) if t is not None)

    @classmethod
    def load(
        cls,
        data_dir: str | Path,
        ids: Sequence[str],
        device: torch.device | str,
        fraction: float = DEFAULT_FRACTION,
        placement: str | None = None,
        progress: bool = True,
    ) -> ResidentData:
        """Read cases `ids` of a prepared or packed folder; `placement` None picks it
        (`choose_placement`), else forces one of PLACEMENTS ("device" and "pinned" need CUDA)."""
        from tqdm import tqdm

        device = torch.device(device)
        ids = list(ids)
        if not ids:
            raise ValueError(f"{data_dir}: no case to load")
        reader = open_reader(data_dir)
        missing = reader.missing(ids)
        if missing:
            raise FileNotFoundError(f"{data_dir}: {len(missing)} prepared case(s) missing, e.g. {missing[0]}")
        labelled = split_has_labels(reader, ids, data_dir)
        shape = tuple(reader.read(ids[0])["image"].shape)
        n_voxels = shape[1] * shape[2] * shape[3]
        nbytes = len(ids) * n_voxels * (2 * shape[0] + (1 if labelled else 0))
        placement = placement or choose_placement(nbytes, device, fraction)
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")
        images = _empty((len(ids), *shape), torch.float16, placement, device)
        labels = None
        if labelled:
            labels = _empty((len(ids), 1, *shape[1:]), torch.uint8, placement, device)
        cases = tqdm(_read_ahead(reader, ids), total=len(ids), desc=f"load ({placement})", unit="case",
                     disable=not progress)
        for row, (case_id, case) in enumerate(zip(ids, cases, strict=True)):
            if tuple(case["image"].shape) != shape:
                raise ValueError(f"{data_dir}: case {case_id} has shape {tuple(case['image'].shape)}, "
                                 f"the first {shape}")
            images[row].copy_(case["image"])  # casts pt32's float32 to float16
            if labels is not None:
                labels[row].copy_(case["label"])
        return cls(ids, images, labels, placement)

    def gather(
        self, indices: Sequence[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, labels) of rows `indices` on `device`, in the stored dtypes."""
        if self.placement == "pinned":
            take = lambda t: copy_rows(t, indices, device)  # noqa: E731
        else:
            index = torch.as_tensor(indices, device=self.images.device)
            take = lambda t: t.index_select(0, index).to(device)  # noqa: E731
        return take(self.images), None if self.labels is None else take(self.labels)
