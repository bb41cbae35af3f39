"""CUDA memory snapshots of a training step, and where the peak went.

    from profiles.memory import record_memory_history, summarize_snapshot, format_summary
    with record_memory_history(run / "memory.pickle") as rec:
        for _ in range(2):
            step()                      # forward, loss, backward, optimizer
    print(format_summary(summarize_snapshot(rec.snapshot, rec.baseline_bytes)))

The pickle is PyTorch's own snapshot format (torch.cuda.memory._dump_snapshot): drag it onto
https://pytorch.org/memory_viz for the timeline. The summary replays the allocator's event trace,
finds the moment of peak allocated memory, and splits what was live then by category (memory live
before recording started: parameters, optimizer state, inputs; forward; backward; optimizer) and by
the innermost source line outside torch that allocated it. `python -m profiles.memory FILE.pickle`
prints the same summary on any machine (no GPU needed to read a snapshot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BEFORE = "before recording"  # parameters, optimizer state, inputs: allocated before the window


@dataclass
class MemoryRecording:
    baseline_bytes: int = 0  # torch.cuda.memory_allocated() when recording started
    snapshot: dict | None = None
    peak_bytes: int = 0  # torch.cuda.max_memory_allocated() over the recording
    path: Path | None = None


@dataclass
class MemorySummary:
    peak_bytes: int  # replayed: baseline + live allocations at the peak event
    peak_event: int  # index of the allocation that reached the peak
    by_category: dict[str, int] = field(default_factory=dict)  # bytes live at the peak
    top_sites: list[tuple[str, int, int]] = field(default_factory=list)  # (site, bytes, allocations)


@contextlib.contextmanager
def record_memory_history(
    path: str | os.PathLike | None = None, max_entries: int = 1_000_000, device: int | None = None
) -> Iterator[MemoryRecording]:
    """Record every CUDA allocation (with Python stacks) inside the block; write the snapshot to `path`."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("record_memory_history needs a CUDA device; this machine has none")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    rec = MemoryRecording(baseline_bytes=torch.cuda.memory_allocated(device))
    torch.cuda.memory._record_memory_history(max_entries=max_entries, stacks="python", device=device)
    try:
        yield rec
    finally:
        torch.cuda.synchronize(device)
        rec.peak_bytes = torch.cuda.max_memory_allocated(device)
        rec.snapshot = torch.cuda.memory._snapshot(device)
        if path is not None:
            rec.path = Path(path)
            rec.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = rec.path.with_name(rec.path.name + ".tmp")
            torch.cuda.memory._dump_snapshot(str(tmp))
            os.replace(tmp, rec.path)
            # what the pickle cannot hold: memory live before recording (parameters, optimizer state)
            sidecar = baseline_path(rec.path)
            tmp = sidecar.with_name(sidecar.name + ".tmp")
            tmp.write_text(json.dumps({"baseline_bytes": rec.baseline_bytes, "peak_bytes": rec.peak_bytes}))
            os.replace(tmp, sidecar)
        torch.cuda.memory._record_memory_history(enabled=None, device=device)


def baseline_path(snapshot: Path) -> Path:
    """The JSON beside a snapshot written by `record_memory_history`: {baseline_bytes, peak_bytes}."""
    return snapshot.with_suffix(".json")


def _in_torch(filename: str) -> bool:
    return "/torch/" in filename or filename.startswith("<") or filename.endswith("contextlib.py")


def classify(frames: list[dict[str, Any]]) -> tuple[str, str]:
    """(category, site) of one allocation from its Python frames (innermost first)."""
    names = [(f.get("filename", ""), f.get("name", "")) for f in frames]
    # On CUDA the backward runs on autograd's own thread, whose allocations the allocator records
    # without Python frames, or (a custom Function's Python backward) with a stack whose outermost
    # frame is autograd's Function.apply, called from C++ rather than from the step's code.
    from_autograd_thread = not names or names[-1][0].endswith("autograd/function.py")
    if any("/torch/optim/" in filename for filename, _ in names):
        category = "optimizer"
    elif from_autograd_thread:
        category = "backward"
    elif any(
        (filename.endswith("torch/_tensor.py") and name == "backward")
        # the autograd engine's entry points; not autograd/function.py, which every custom
        # Function's forward also runs through (Function.apply)
        or ("/torch/autograd/" in filename and not filename.endswith("autograd/function.py"))
        for filename, name in names
    ):
        category = "backward"
    elif any(not _in_torch(filename) for filename, _ in names):
        category = "forward"
    else:
        category = "other"
    for f in frames:
        if not _in_torch(f.get("filename", "")):
            path = Path(f["filename"])
            return category, f"{path.parent.name}/{path.name}:{f.get('line', 0)} {f.get('name', '')}"
    return category, "(torch internals)"


def summarize_snapshot(
    snapshot: dict, baseline_bytes: int = 0, device: int = 0, top: int = 15
) -> MemorySummary:
    """Replay the allocator trace of `device` and describe what was live at the peak.

    The trace records requested bytes, not the allocator's rounded blocks (512 B multiples, larger for
    big tensors) that `memory_allocated()` counts: the replayed peak reads a little under
    `max_memory_allocated()`, and the "before recording" share is `baseline_bytes` (rounded) less the
    requested sizes of older blocks freed while recording."""
    traces = snapshot.get("device_traces") or []
    if device >= len(traces):
        raise ValueError(f"snapshot has no trace for device {device} (record with record_memory_history)")
    live: dict[int, tuple[int, str, str]] = {}
    requested: set[int] = set()  # freed, not yet completed
    total, baseline = 0, baseline_bytes
    peak, peak_event, peak_live = baseline, -1, {}
    for i, event in enumerate(traces[device]):
        action, addr, size = event.get("action"), event.get("addr"), event.get("size", 0)
        if action == "alloc":
            live[addr] = (size, *classify(event.get("frames", [])))
            total += size
            if baseline + total > peak:
                peak, peak_event, peak_live = baseline + total, i, dict(live)
        elif action in ("free_requested", "free_completed"):
            # memory_allocated() drops at the request; a block used on another stream (record_stream:
            # the prefetcher's batches) completes later. Traces without requests free at completion.
            if action == "free_completed" and addr in requested:
                requested.discard(addr)
                continue
            if action == "free_requested":
                requested.add(addr)
            if addr in live:
                total -= live.pop(addr)[0]
            else:  # allocated before recording started
                baseline -= size
    by_category: dict[str, int] = {BEFORE: peak - sum(size for size, _, _ in peak_live.values())}
    sites: dict[str, list[int]] = {}
    for size, category, site in peak_live.values():
        by_category[category] = by_category.get(category, 0) + size
        entry = sites.setdefault(f"[{category}] {site}", [0, 0])
        entry[0] += size
        entry[1] += 1
    ranked = sorted(((site, b, n) for site, (b, n) in sites.items()), key=lambda row: -row[1])
    return MemorySummary(peak, peak_event, by_category, ranked[:top])


def _gib(n: int) -> str:
    return f"{n / 2**30:8.3f} GiB"


def format_summary(summary: MemorySummary) -> str:
    lines = [f"peak allocated {_gib(summary.peak_bytes)} (trace event {summary.peak_event})", "by category:"]
    for category, size in sorted(summary.by_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {_gib(size)}  {category}")
    lines.append("largest sites live at the peak:")
    for site, size, count in summary.top_sites:
        lines.append(f"  {_gib(size)}  x{count:<5d} {site}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m profiles.memory", description=__doc__.splitlines()[0])
    parser.add_argument(
        "snapshot", type=Path, help="a pickle written by record_memory_history / _dump_snapshot"
    )
    parser.add_argument("--baseline-bytes", type=int, default=None,
                        help="memory allocated before recording (default: from the JSON that "
                             "record_memory_history writes beside the pickle, else 0)")
    parser.add_argument("--device", type=int, default=0, help="device index inside the snapshot")
    parser.add_argument("--top", type=int, default=15, help="how many source sites to list")
    args = parser.parse_args(argv)
    baseline = args.baseline_bytes
    sidecar = baseline_path(args.snapshot)
    try:
        if baseline is None and sidecar.is_file():
            baseline = int(json.loads(sidecar.read_text())["baseline_bytes"])
        with open(args.snapshot, "rb") as f:
            snapshot = pickle.load(f)
        if not isinstance(snapshot, dict) or "device_traces" not in snapshot:
            raise ValueError("not a CUDA memory snapshot (torch.cuda.memory._snapshot: no device_traces)")
        summary = summarize_snapshot(snapshot, baseline or 0, args.device, args.top)
    except (OSError, pickle.UnpicklingError, ValueError, EOFError, KeyError) as e:
        parser.exit(1, f"{args.snapshot}: cannot summarize memory snapshot: {e}\n")
    if baseline is None:
        print(f"(no {sidecar.name} beside the snapshot and no --baseline-bytes: memory allocated before "
              "recording, parameters and optimizer state, is not in the peak)")
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
