"""Timing helpers for the fused-norm micro-benchmarks (pytest-benchmark and the harness's norm_kernel).

The timed op is the issue's: InstanceNorm3d (affine) + LeakyReLU(0.01) over x = (N, C, D, H, W), as
  - "fused":   kernels.fused_norm_act (Triton),
  - "eager":   nn.InstanceNorm3d(affine=True) then nn.LeakyReLU, as MONAI's blocks run it,
  - "compile": the same eager function under torch.compile.
GB/s counts the bytes the op must move at least: forward reads x and writes y, backward reads x and
dy and writes dx (2 and 3 tensor passes), the ANCHORS.md memory-floor convention.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import runtime
from .fused_norm_act import fused_norm_act

IMPLS = ("fused", "eager", "compile")
LAYOUTS = ("contiguous", "channels_last")
DIRECTIONS = ("fwd", "bwd")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
           "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _eager(x, w, b):
    return F.leaky_relu(F.instance_norm(x, weight=w, bias=b, eps=1e-5), 0.01)


def _fused(x, w, b):
    return fused_norm_act(x, w, b, activation="leaky_relu", negative_slope=0.01, eps=1e-5)


def tensor_passes(direction: str) -> int:
    """Full-tensor reads + writes the op cannot avoid: fwd x -> y (2), bwd x, dy -> dx (3)."""
    return 2 if direction == "fwd" else 3


def make_step(impl: str, shape: tuple[int, ...], dtype: torch.dtype | str, layout: str, direction: str,
              device: str | torch.device) -> Callable[[], object]:
    """A closure running one forward (or one backward) of `impl` on fixed random inputs, unsynchronized."""
    if impl not in IMPLS or layout not in LAYOUTS or direction not in DIRECTIONS:
        raise ValueError(f"impl in {IMPLS}, layout in {LAYOUTS}, direction in {DIRECTIONS}; "
                         f"got {impl!r}, {layout!r}, {direction!r}")
    if impl == "fused":  # on this device: a CPU tensor on a CUDA machine would time the reference
        why = runtime.unavailable_reason(torch.device(device))
        if why:
            raise RuntimeError(f"fused kernels unavailable: {why}")
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    C = shape[1]
    w = torch.ones(C, device=device, requires_grad=True)
    b = torch.zeros(C, device=device, requires_grad=True)
    fn = {"fused": _fused, "eager": _eager, "compile": torch.compile(_eager)}[impl]
    if direction == "fwd":
        return lambda: fn(x, w, b)
    x.requires_grad_(True)
    # the backward runs again on one graph (retain_graph): a compiled backward must not donate (free
    # into its outputs) the buffers it saved, which AOTAutograd does when it can; its backward is
    # compiled at the first call, so the setting holds there too
    functorch_config = torch._functorch.config
    no_donation = (functorch_config.patch(donated_buffer=False) if impl == "compile"
                   and hasattr(functorch_config, "donated_buffer") else contextlib.nullcontext())
    with no_donation:
        y = fn(x, w, b)
    dy = torch.empty_like(y).copy_(torch.randn(y.shape, generator=gen))  # y's layout, drawn like x

    def backward():
        with no_donation:
            return torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)

    return backward


def time_step(step: Callable[[], object], device: str | torch.device, *, warmup: int = 3,
              iters: int = 20) -> list[float]:
    """Milliseconds per call, one sample per call: CUDA events on a GPU, perf_counter on a CPU."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_norm(impl: str, shape: tuple[int, ...], dtype: torch.dtype | str, layout: str, direction: str,
              device: str | torch.device, *, warmup: int = 3, iters: int = 20) -> dict:
    """Median ms of one fwd or bwd of `impl`, and the GB/s that implies at the op's minimal traffic.

    Returns {"ms", "gb_per_s", "bytes", "ms_p20", "ms_p80", "n"}.
    """
    step = make_step(impl, shape, dtype, layout, direction, device)
    samples = sorted(time_step(step, device, warmup=warmup, iters=iters))
    ms = statistics.median(samples)
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    nbytes = tensor_passes(direction) * torch.Size(shape).numel() * dtype.itemsize
    last = len(samples) - 1
    return {"ms": ms, "gb_per_s": nbytes / (ms * 1e-3) / 1e9, "bytes": nbytes,
            "ms_p20": samples[int(0.2 * last)], "ms_p80": samples[int(0.8 * last)], "n": len(samples)}


def copy_gb_per_s(device: str | torch.device, nbytes: int = 1 << 30, iters: int = 10) -> float:
    """Measured device-to-device copy rate (read + write bytes / s), the ceiling to compare GB/s against."""
    # Written before timing: on a host, never-touched pages all map the shared zero page, so reading
    # an uninitialized source would read one cached page, not nbytes / 2 of memory.
    src = torch.ones(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(time_step(lambda: dst.copy_(src), device, iters=iters))
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def main(argv: list[str] | None = None) -> int:
    """`python -m kernels.bench`: ms and GB/s per impl x layout x direction, one JSON line each."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m kernels.bench", description=main.__doc__)
    ap.add_argument("--shape", default=None,
                    help="N,C,D,H,W (default 2,32,128,128,128 on cuda, 1,8,32,32,32 on the CPU)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (default where there is one) or cpu (small --shape: the CPU times eager and "
                    "compile only)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps (default 50 on cuda, 5 on the CPU)")
    args = ap.parse_args(argv)
    cpu = torch.device(args.device).type == "cpu"  # the CUDA default shape takes minutes a step there
    shape = tuple(int(v) for v in (args.shape or ("1,8,32,32,32" if cpu else "2,32,128,128,128")).split(","))
    args.iters = args.iters or (5 if cpu else 50)
    copy = copy_gb_per_s(args.device) if torch.device(args.device).type == "cuda" else None
    for impl in args.impls.split(","):
        for layout in LAYOUTS:
            for direction in DIRECTIONS:
                row = dict(impl=impl, shape=list(shape), dtype=args.dtype, layout=layout, direction=direction)
                try:
                    row |= time_norm(impl, shape, args.dtype, layout, direction, args.device,
                                     iters=args.iters)
                    if copy:
                        row |= dict(copy_gb_per_s=copy, fraction_of_copy=row["gb_per_s"] / copy)
                except Exception as e:  # one failing impl (e.g. compile) must not hide the others
                    row["error"] = f"{type(e).__name__}: {e}"
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
