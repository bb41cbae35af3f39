"""Summarize a torch.profiler Chrome trace: time by category (convolution, normalization,
attention/matmul, elementwise, copies, other, idle).

On CUDA the GPU timeline is used: every kernel, memcpy and memset, classified by name, and idle
= the profiled window minus the union of busy intervals. On the CPU, where there is no device
timeline, each operator's *self* time (its duration minus its children's) on the threads that
ran operators, so nested ops are not counted twice. Pure Python (gzip + json): `segbench
report` and a laptop without torch can run it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

# Checked in order: the first category with a matching substring wins (cuDNN's convolutions are
# "implicit_gemm" kernels, so convolution is tested before matmul).
PATTERNS: list[tuple[str, tuple[str, ...]]] = [
    (
        "copies",
        (
            "memcpy",
            "memset",
            "copy",
            "nchwtonhwc",
            "nhwctonchw",
            "transpose",
            "aten::to",
            "contiguous",
            "clone",
            "cat_",
            "aten::cat",
        ),
    ),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "winograd", "implicit_gemm", "cudnn")),
    (
        "normalization",
        (
            "norm",
            "welford",
            "_stats_kernel",
            "_combine_kernel",
            "_apply_kernel",
            "_bwd_reduce",
            "_bwd_combine",
            "_bwd_apply",
            "_ln_",
        ),
    ),
    (
        "attention/matmul",
        (
            "gemm",
            "matmul",
            "aten::mm",
            "aten::bmm",
            "addmm",
            "linear",
            "flash",
            "fmha",
            "attention",
            "cutlass",
            "cublas",
        ),
    ),
    (
        "elementwise",
        (
            "elementwise",
            "vectorized",
            "pointwise",
            "triton_poi",
            "triton_per",
            "triton_red",
            "reduce",
            "unrolled",
            "softmax",
            "leaky",
            "relu",
            "prelu",
            "add",
            "mul",
            "div",
            "sub",
            "fill",
            "where",
            "exp",
            "log",
            "pow",
            "sqrt",
            "sigmoid",
            "adam",
            "foreach",
            "dropout",
            "clamp",
            "sum",
            "mean",
            "max",
            "min",
            "scatter",
            "gather",
            "index",
        ),
    ),
]
CATEGORIES = [name for name, _ in PATTERNS] + ["other", "idle"]
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def classify(name: str) -> str:
    low = name.lower()
    for category, needles in PATTERNS:
        if any(n in low for n in needles):
            return category
    return "other"


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def load_trace(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def _gpu_summary(events: list[dict]) -> dict:
    gpu = [e for e in events if e.get("cat") in GPU_CATS]
    cats = {c: 0.0 for c in CATEGORIES}
    for e in gpu:
        cats[classify(e["name"]) if e["cat"] == "kernel" else "copies"] += e["dur"]
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in gpu]
    window = max(e for _, e in spans) - min(s for s, _ in spans)
    cats["idle"] = max(0.0, window - _union_length(spans))
    return {"device": "cuda", "total_us": window, "categories": cats}


def _self_times(ops: list[dict]) -> list[tuple[dict, float]]:
    """(op, self time) with children's time removed, per thread, by interval nesting."""
    out = []
    by_thread: dict = {}
    for e in ops:
        by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    for thread_ops in by_thread.values():
        thread_ops.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [event, end, child time]
        for e in thread_ops:
            while stack and stack[-1][1] <= e["ts"]:
                done = stack.pop()
                out.append((done[0], done[0]["dur"] - done[2]))
            if stack:
                stack[-1][2] += e["dur"]
            stack.append([e, e["ts"] + e["dur"], 0.0])
        out += [(s[0], s[0]["dur"] - s[2]) for s in stack]
    return out


def _cpu_summary(events: list[dict]) -> dict:
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    cats = {c: 0.0 for c in CATEGORIES}
    for op, self_us in _self_times(ops):
        cats[classify(op["name"])] += max(0.0, self_us)
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in ops]
    window = max(e for _, e in spans) - min(s for s, _ in spans)
    threads = len({(e.get("pid"), e.get("tid")) for e in ops})
    # Several threads may run ops at once: idle is the main window not covered by any op.
    cats["idle"] = max(0.0, window - _union_length(spans))
    return {
        "device": "cpu",
        "total_us": sum(cats.values()),
        "window_us": window,
        "threads": threads,
        "categories": cats,
    }


def summarize_trace(path: str | Path, steps: int | None = None) -> dict:
    """`{device, total_us, categories: {name: us}, steps}` for a Chrome trace (.json or .json.gz)."""
    events = load_trace(path)
    if any(e.get("cat") in GPU_CATS for e in events):
        summary = _gpu_summary(events)
    elif any(e.get("cat") == "cpu_op" for e in events):
        summary = _cpu_summary(events)
    else:
        raise ValueError(f"{path}: no kernels or operators in this trace")
    summary["steps"] = steps
    summary["trace"] = Path(path).name
    return summary


def format_summary(summary: dict) -> str:
    total = max(summary["total_us"], 1e-9)
    lines = [
        f"{summary['device']} time by category ({total / 1e3:.2f} ms over {summary.get('steps')} steps):"
    ]
    for cat, us in sorted(summary["categories"].items(), key=lambda kv: -kv[1]):
        if us > 0:
            lines.append(f"  {cat:<17} {us / 1e3:9.2f} ms  {us / total:6.1%}")
    return "\n".join(lines)
