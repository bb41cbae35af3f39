"""Summarize a torch.profiler Chrome trace: time by category (copies, attention, convolution,
normalization, matmul, elementwise, other, idle) and the kernels (or CPU operators) that took most.

On CUDA the GPU timeline is used: every kernel, memcpy and memset, classified by name, and idle
= the profiled window minus the union of busy intervals. On the CPU, where there is no device
timeline, each operator's *self* time (its duration minus its children's) on the threads that
ran operators, so nested ops are not counted twice. Pure Python (gzip + json): `segbench
report` and a laptop without torch can run it.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

# Checked in order: the first category with a matching substring wins. Attention before convolution
# (cuDNN's SDPA kernels are "cudnn_..._sdpa_..."; the memory-efficient ones "fmha_cutlass..."), and
# convolution before matmul (cuDNN's convolutions are "implicit_gemm" kernels).
PATTERNS: list[tuple[str, tuple[str, ...]]] = [
    (
        "copies",
        (
            "memcpy",
            "memset",
            "copy",
            "nchwtonhwc",
            "nhwctonchw",
            "transpose_",  # transpose_readWrite kernels, not conv_transpose3d
            "aten::to",
            "contiguous",
            "clone",
            "cat_",
            "aten::cat",
            "aten::roll",  # Swin's shifted windows ("roll" alone: unrolled_elementwise_kernel)
            "roll_cuda",
            "aten::pad",
            "constant_pad",
        ),
    ),
    # "attn": also kernels.window_attention's Triton kernels (_wattn_*)
    ("attention", ("attention", "flash", "fmha", "sdpa", "attn")),
    # im2col / vol2col: the CPU's and a fallback GPU path's convolutions
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "winograd", "implicit_gemm", "cudnn", "im2col",
                     "col2im", "vol2col", "col2vol")),
    (
        "normalization",
        # gammabeta: LayerNorm's backward (GammaBetaBackwardCUDAKernel); kernels' own: _SEGBENCH_NORM
        ("norm", "welford", "gammabeta"),
    ),
    # nvjet_*: cuBLAS's Hopper GEMM kernels in recent CUDA builds
    ("matmul", ("gemm", "matmul", "aten::mm", "aten::bmm", "addmm", "baddbmm", "linear", "cutlass", "cublas",
                "nvjet")),
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
            "gelu",  # Swin's MLP
            "silu",
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
TOP = 12  # kernels (operators on the CPU) listed by time


# Inductor names a generated kernel after the ops fused into it (triton_poi_fused_convolution_leaky_relu_0):
# "convolution" there is the epilogue that reads a cuDNN convolution's output, not the convolution.
# The C++ kernels of a CPU compile show up as graph_0_cpp_fused_... (segbench profile turns their events on).
_INDUCTOR_KERNEL = re.compile(r"^(?:graph_\d+_)?(?:triton_(?:poi|per|red)|cpp)_fused_(.*?)(?:_\d+)?$")
# kernels.fused_norm_act / kernels.layer_norm's Triton kernels, by their exact names: a substring like
# "_apply_kernel" is also in PyTorch's multi_tensor_apply_kernel (fused AdamW, GradScaler, _foreach_*)
_SEGBENCH_NORM = re.compile(
    r"(?:_(?:stats|combine|apply|bwd_reduce|bwd_combine|bwd_apply)|_ln_(?:fwd|bwd))_kernel(?:_\w+)?")
_INDUCTOR_COPIES = ("clone", "cat", "_to_copy", "copy", "constant_pad_nd", "permute", "flip", "roll")


def classify(name: str) -> str:
    low = name.lower()
    fused = _INDUCTOR_KERNEL.match(low)
    if fused:
        ops = fused.group(1)
        if any(k in ops for k in ("norm", "var_mean", "welford")):
            return "normalization"
        return "copies" if ops in _INDUCTOR_COPIES else "elementwise"
    if _SEGBENCH_NORM.fullmatch(low):
        return "normalization"
    # optimizer and foreach kernels (a foreach copy stays a copy; grad-norm's lpnorm is a reduction);
    # random normals (aten::normal_, CUDA's normal_and_transform), whose names hold "norm"
    if "copy" not in low and any(k in low for k in ("multi_tensor_apply", "foreach", "adam", "normal_",
                                                     "lpnorm")):
        return "elementwise"
    if low.startswith("triton_tem_"):  # inductor templates: max-autotune matmuls, convs, flex attention
        return "attention" if "attention" in low else "convolution" if "conv" in low else "matmul"
    if "upsample" in low:  # upsample_trilinear3d is no matmul
        return "elementwise"
    if "cudnn" in low and ("bn_fw" in low or "bn_bw" in low):  # cuDNN's batch-norm kernels
        return "normalization"
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
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):  # a summary.json or memory snapshot given by mistake
        raise ValueError(f"{path}: not a Chrome trace (no traceEvents list)")
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X"
            and isinstance(e.get("dur"), (int, float))]


def _top(timed: list[tuple[str, str, float]]) -> list[dict]:
    """The TOP names by total time: {name, category, us, calls}; `timed` is (name, category, us)."""
    by_name: dict[str, list] = {}
    for name, cat, us in timed:
        entry = by_name.setdefault(name, [cat, 0.0, 0])
        entry[1] += us
        entry[2] += 1
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:TOP]
    # kernel names can be template instantiations of hundreds of characters
    return [{"name": n[:160], "category": c, "us": us, "calls": calls} for n, (c, us, calls) in ranked]


def _step_span(events: list[dict]) -> tuple[float, float] | None:
    """First start and last end of the host's ProfilerStep#N ranges (torch.profiler opens one per
    step, back to back), or None in a trace without them."""
    steps = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")]
    if not steps:
        return None
    return min(e["ts"] for e in steps), max(e["ts"] + e["dur"] for e in steps)


def _window(spans: list[tuple[float, float]], steps: tuple[float, float] | None) -> float:
    """The traced window: the profiled steps' span, widened to any work that ran past it (kernels
    still running when the last step's host side ended). Without step ranges, first to last span:
    then a wait before the first op or after the last one (a data loader's) is not in the window."""
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    if steps is not None:
        start, end = min(start, steps[0]), max(end, steps[1])
    return end - start


def _gpu_summary(events: list[dict]) -> dict:
    """Kernel and copy time by category over the traced window. Kernels of several streams that ran at
    once (a prefetcher's copies beside the step's kernels) share the overlapping time, so the
    categories and idle add up to the window; `overlap_us` is how long two or more ran at once. Idle
    includes the device's wait before its first kernel of a step (data, launch) where the trace has
    the steps' host ranges."""
    gpu = [e for e in events if e.get("cat") in GPU_CATS]
    timed, spans = [], []
    for e in gpu:
        cat = classify(e["name"]) if e["cat"] == "kernel" else "copies"
        timed.append((e["name"], cat, e["dur"]))
        spans.append((e["ts"], e["ts"] + e["dur"], cat))
    cats, overlap_us = _shared_time(spans)
    intervals = [(s, e) for s, e, _ in spans]
    window = _window(intervals, _step_span(events))
    cats["idle"] = max(0.0, window - _union_length(intervals))
    return {"device": "cuda", "total_us": window, "categories": cats, "overlap_us": overlap_us,
            "kernels": len(gpu), "idle_gaps": _idle_gaps(intervals), "top": _top(timed)}


GAP_US = 10.0  # an idle stretch this long between two kernels: the device waited for the host


def _idle_gaps(spans: list[tuple[float, float]]) -> int:
    """How many times the device sat idle for GAP_US or more between two pieces of work: with many
    short kernels, a count near the kernel count says the host's launches, not the GPU, set the pace
    (CUDA graphs, fewer kernels); a few long gaps point at syncs or waits instead."""
    gaps, end = 0, None
    for s, e in sorted(spans):
        if end is not None and s - end >= GAP_US:
            gaps += 1
        end = e if end is None else max(end, e)
    return gaps


def _shared_time(spans: list[tuple[float, float, str]]) -> tuple[dict[str, float], float]:
    """({category: time}, time two or more spans overlapped): a sweep over the spans' ends, each slice
    of time shared equally among the spans running in it."""
    cats = {c: 0.0 for c in CATEGORIES}
    edges = sorted([(s, 1, c) for s, _, c in spans] + [(e, -1, c) for _, e, c in spans])
    running: dict[str, int] = {}
    overlap, last = 0.0, None
    for t, step, cat in edges:
        n = sum(running.values())
        if n and last is not None and t > last:
            for c, k in running.items():
                cats[c] += (t - last) * k / n
            overlap += (t - last) if n > 1 else 0.0
        running[cat] = running.get(cat, 0) + step
        if not running[cat]:
            del running[cat]
        last = t
    return cats, overlap


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
    timed = []
    for op, self_us in _self_times(ops):
        cat, self_us = classify(op["name"]), max(0.0, self_us)
        cats[cat] += self_us
        timed.append((op["name"], cat, self_us))
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in ops]
    window = _window(spans, _step_span(events))
    threads = len({(e.get("pid"), e.get("tid")) for e in ops})
    # Several threads may run ops at once: idle is the main window not covered by any op.
    cats["idle"] = max(0.0, window - _union_length(spans))
    return {
        "device": "cpu",
        "total_us": sum(cats.values()),
        "window_us": window,
        "threads": threads,
        "categories": cats,
        "top": _top(timed),
    }


def summarize_trace(path: str | Path, steps: int | None = None) -> dict:
    """`{device, total_us, categories: {name: us}, top: [{name, category, us, calls}], steps}` for a
    Chrome trace (.json or .json.gz); `top` is kernels by device time on CUDA, else CPU operators by
    self time."""
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
    if summary.get("kernels"):
        lines.append(f"  {summary['kernels']} kernels and copies, {summary['idle_gaps']} idle gaps of "
                     f"{GAP_US:g} µs or more between them")
    if summary.get("overlap_us"):
        overlap_ms = summary["overlap_us"] / 1e3
        lines.append(f"  ({overlap_ms:.2f} ms of it with two or more streams at once, shared among them)")
    if summary.get("top"):
        lines.append("top by time:")
        lines += [f"  {t['us'] / 1e3:9.2f} ms  {t['calls']:5d}x  {t['category']:<13} {t['name'][:90]}"
                  for t in summary["top"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m profiles.summarize TRACE [--steps N]`: a Chrome trace's time by category, no torch."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m profiles.summarize", description=main.__doc__)
    parser.add_argument("trace", type=Path, help="a Chrome trace (.json[.gz]): RUN/profiles/*/trace.json.gz")
    parser.add_argument("--steps", type=int, help="steps the trace holds (for the per-step figures)")
    args = parser.parse_args(argv)
    try:
        print(format_summary(summarize_trace(args.trace, args.steps)))
    except (OSError, ValueError) as err:
        print(f"python -m profiles.summarize: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
