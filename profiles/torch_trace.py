"""Capture chosen steps of a step function: torch.profiler, or cudaProfilerStart/Stop for nsys.

Called by `segbench profile` (bench.profile) in a case process of its own, never in a timing run.
`cfg` is `{wait, warmup, active, memory, emit_nvtx}`. `capture_torch` writes to OUT:
- trace.json.gz: Chrome trace of the active steps (chrome://tracing, Perfetto)
- key_averages.txt: the operator table, sorted by device (or CPU) time
- summary.json: time by category (profiles.summarize), which the report shows
- memory_snapshot.pickle: with `memory` on CUDA (https://pytorch.org/memory_viz), memory_snapshot.json
  (the memory allocated before recording) and memory_summary.txt (what was live at the peak)
`capture_nsys` runs the steps with cudaProfilerStart/Stop around the active ones, for
`nsys profile --capture-range=cudaProfilerApi` (profiles.nsys).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _sync_step(device) -> None:
    """Until the step's own stream is done: a device-wide sync would also wait for a prefetcher's side
    stream, which the timed run lets run on (bench.workloads.train_e2e), and trace a serialized loop."""
    import torch

    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def capture_torch(step, device, cfg: dict, out: Path) -> dict:
    """Profile `step` on a wait/warmup/active schedule; returns the category summary."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from profiles.memory import baseline_path, record_memory_history
    from profiles.summarize import format_summary, summarize_trace

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    trace = out / "trace.json.gz"
    partial = out / "trace.partial.json.gz"  # a step that raises still exports: not under the real name
    snapshot = out / "memory_snapshot.pickle"
    earlier = (trace, partial, out / "summary.json", out / "key_averages.txt", snapshot,
               baseline_path(snapshot), out / "memory_summary.txt")
    for old in earlier:  # no earlier capture's summary or snapshot beside this one's trace
        old.unlink(missing_ok=True)

    def export(prof) -> None:
        prof.export_chrome_trace(str(partial))

    total = cfg["wait"] + cfg["warmup"] + cfg["active"]
    if cfg.get("memory") and device.type != "cuda":
        print("--memory: the memory snapshot records the CUDA caching allocator; none on the CPU")
    memory = (
        record_memory_history(snapshot, max_entries=200_000)
        if cfg.get("memory") and device.type == "cuda"
        else contextlib.nullcontext()
    )
    done = False
    try:
        with memory as recording, profile(
            activities=activities,
            schedule=schedule(wait=cfg["wait"], warmup=cfg["warmup"], active=cfg["active"], repeat=1),
            on_trace_ready=export,
            record_shapes=True,
        ) as prof:
            for _ in range(total):
                step()
                _sync_step(device)
                prof.step()
        done = True
    finally:
        if not done:  # the profiler exported the steps traced before the failure: not a capture
            partial.unlink(missing_ok=True)
    partial.replace(trace)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    (out / "key_averages.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=60))
    summary = summarize_trace(trace, steps=cfg["active"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    if recording is not None:
        from profiles import memory as snapshots

        at_peak = snapshots.summarize_snapshot(recording.snapshot, recording.baseline_bytes)
        peak = snapshots.format_summary(at_peak)
        (out / "memory_summary.txt").write_text(peak + "\n")
        print(peak)
    return summary


def capture_nsys(step, device, cfg: dict) -> None:
    """Run the steps with cudaProfilerStart/Stop around the active ones (nsys --capture-range)."""
    import contextlib

    import torch

    for _ in range(cfg["wait"] + cfg["warmup"]):
        step()
    _sync(device)
    nvtx = torch.autograd.profiler.emit_nvtx() if cfg.get("emit_nvtx") else contextlib.nullcontext()
    torch.cuda.profiler.start()
    with nvtx:
        for _ in range(cfg["active"]):
            step()
        _sync(device)
    torch.cuda.profiler.stop()
