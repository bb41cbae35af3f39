"""How segbench measures: step timers, peak memory, FLOPs, device ceilings, numeric parity.

Timing follows torch.utils.benchmark and the Triton/TorchBench habits: warm up by count, then
time each step on its own. On CUDA every step is bracketed by CUDA events and the host
synchronizes after it (as ANCHORS.md was measured), so a step's time is the GPU time from its
first launch to its last kernel; on the CPU it is `time.perf_counter`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def sync_stream(device: torch.device | str) -> None:
    """Until the current stream's queued work is done; other streams (a prefetcher's) run on."""
    if torch.device(device).type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class Laps:
    """Wall seconds of a case's phases, for planning a time-boxed run (a GPU lease): `lap(name)` ends
    the phase that began at the previous lap (or at construction). What the case process spent before
    it (start, imports, CUDA context) is its case_wall_s less their sum. Each lap is printed too: a
    case killed by its timeout writes no row, its log says how far it got."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.s[name] = round(now - self._last, 3)
        self._last = now
        print(f"phase {name}: {self.s[name]:.1f} s", flush=True)


def time_once(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall seconds of one call, synchronized before and after (first step, compile included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_steps(
    fn: Callable[[], object],
    n: int,
    device: torch.device | str,
    setup: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds of each of `n` calls of `fn`; `setup`, if given, runs untimed before each call."""
    if torch.device(device).type != "cuda":
        times = []
        for _ in range(n):
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    torch.cuda.synchronize()
    for start, end in events:
        if setup is not None:
            setup()
            # the GPU idle at the start event, as for a call without setup: else the call's launch
            # overhead hides behind the setup's kernels (a timed backward behind its forward)
            torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1000.0 for start, end in events]


# --- memory -------------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_rss_reset = False  # whether the peak RSS was reset in this process (VmHWM is then since the reset)


def _rss_peak_bytes() -> int | None:
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        match = None
    if match:
        return int(match.group(1)) * 1024
    import resource  # not Linux: lifetime peak, cannot be reset
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on the BSDs


def steady_state(step: Callable[[], object], warmup: int, iters: int, device: torch.device | str) -> dict:
    """Warm up by count, reset the peak-memory counters, then time `iters` steps one by one.

    Returns the row fields every step workload reports: peak memory, `s_per_iter`
    {median, p20, p80, n}, the raw `step_times_s` and, on CUDA, the GPU's state during the timed steps
    (`gpu_during`) and just after them (`gpu_state`) (bench.gpu_state).
    """
    from reports.stats import summarize

    for _ in range(warmup):
        step()
    reset_peak_memory(device)
    samples, during = watched(lambda: time_steps(step, iters, device), device)
    row = {**peak_memory(device), "s_per_iter": summarize(samples), "step_times_s": samples}
    if during is not None:
        row["gpu_during"] = during
    if torch.device(device).type == "cuda":
        from bench.gpu_state import sample

        state = sample(gpu_id(device))  # right after the timed steps, while the GPU is still hot
        if state is not None:
            row["gpu_state"] = state
    return row


def gpu_id(device: torch.device | str) -> str | None:
    """nvidia-smi's id of a CUDA device: by UUID, since CUDA's device numbers need not be nvidia-smi's."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    return f"GPU-{uuid}" if uuid else None


def watched(fn: Callable[[], T], device: torch.device | str) -> tuple[T, dict | None]:
    """fn()'s result and, on CUDA, the GPU's clocks, temperature and slowdowns while it ran
    (bench.gpu_state.Watch's summary; None off CUDA or without nvidia-smi)."""
    if torch.device(device).type != "cuda":
        return fn(), None
    from bench.gpu_state import Watch

    with Watch(gpu_id(device)) as watch:
        result = fn()
    return result, watch.summary()


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak: CUDA allocator peaks, or the process's peak RSS (Linux clear_refs 5)."""
    global _rss_reset
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        _CLEAR_REFS.write_text("5")
        _rss_reset = True
    except OSError:
        _rss_reset = False  # the peak then covers the process's whole life; peak_kind says so


def peak_memory(device: torch.device | str) -> dict[str, int | str | None]:
    """`peak_bytes` (CUDA: max allocated; CPU: peak RSS), `peak_reserved_bytes`, `peak_kind`."""
    if torch.device(device).type == "cuda":
        return {
            "peak_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "peak_kind": "cuda_max_allocated",
        }
    # cpu_peak_rss: since the last reset; cpu_peak_rss_lifetime: since the process started (no reset)
    kind = "cpu_peak_rss" if _rss_reset else "cpu_peak_rss_lifetime"
    return {"peak_bytes": _rss_peak_bytes(), "peak_reserved_bytes": None, "peak_kind": kind}


# --- work and ceilings -------------------------------------------------------------------------


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as torch.utils.flop_counter counts them (convolutions, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device | str) -> dict[str, float | str]:
    """The device's achieved dense matmul rate: bf16 on CUDA, fp32 on the CPU (the MFU denominator)."""
    device = torch.device(device)
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 10
    else:
        n, dtype, reps = 1024, torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = sorted(time_steps(lambda: a @ b, reps, device))[reps // 2]
    return {"matmul_flops_per_s": 2 * n**3 / seconds, "matmul_dtype": str(dtype).replace("torch.", "")}


def copy_rate(device: torch.device | str) -> float:
    """Achieved copy bandwidth in bytes/s, counting bytes read plus bytes written.

    kernels.bench's measurement, so the harness's `fraction_of_copy` and the kernel micro-benchmarks'
    share one ceiling; 1 GiB copied on a GPU (far beyond L2), 64 MiB on a CPU.
    """
    from kernels.bench import copy_gb_per_s

    device = torch.device(device)
    copied_bytes = (1 << 30) if device.type == "cuda" else (1 << 26)
    return copy_gb_per_s(device, nbytes=2 * copied_bytes, iters=9) * 1e9


# --- parity --------------------------------------------------------------------------------------


def max_rel_dev(values: list[float], reference: list[float]) -> float:
    """max_i |values_i - reference_i| / |reference_i| over a loss trajectory."""
    if len(values) != len(reference) or not values:
        raise ValueError(f"trajectories differ in length: {len(values)} vs {len(reference)}")
    if not all(math.isfinite(v) for v in (*values, *reference)):  # max() over a NaN depends on its place
        return math.inf
    return max(abs(v - r) / max(abs(r), 1e-12) for v, r in zip(values, reference, strict=False))
