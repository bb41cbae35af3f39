"""Process layout for training: one process, or DDP under `torchrun` (RANK / WORLD_SIZE set).

gloo on CPU, NCCL on CUDA; each process drives the GPU of its LOCAL_RANK. Multi-node runs need
nothing more: torchrun's rendezvous sets the same variables on every node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Layout:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda (this process's LOCAL_RANK GPU) if present, else cpu; else as given."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(preference)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {preference}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {preference}: PyTorch {torch.__version__} sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def setup(device_preference: str) -> tuple[Layout, torch.device]:
    """Read torchrun's environment, pick the device and, with several processes, join the group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    layout = Layout(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = resolve_device(device_preference, layout.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if layout.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return layout, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Sum of `tensor` over processes (the tensor itself with one process)."""
    if layout.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(layout: Layout) -> None:
    if layout.distributed:
        dist.barrier()
