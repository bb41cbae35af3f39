"""results.jsonl -> pandas: one table per workload, speedups recomputed from the stored samples.

No torch here: a report can be rebuilt on a laptop from a run folder copied off a GPU machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SEED, FP32 = "seed", "fp32"  # the two named baselines every table is compared with


class ResultsError(ValueError):
    pass


def load_results(run: str | Path) -> list[dict]:
    """The rows of RUN/results.jsonl; a bad line is one error naming the file and the line. A case
    appears once (a resume rewrites the file with the rows it keeps): two rows of one (workload,
    variant) would be paired and compared arbitrarily."""
    path = Path(run) / "results.jsonl"
    if not path.is_file():
        raise ResultsError(f"{path}: no such file (is {run} a segbench run folder?)")
    rows, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ResultsError(f"{path}:{number}: not JSON ({err.msg})") from None
        missing = [k for k in ("workload", "variant", "status") if k not in row]
        if missing:
            raise ResultsError(f"{path}:{number}: row lacks {', '.join(missing)}")
        key = (row["workload"], row["variant"])
        if key in seen:
            raise ResultsError(f"{path}:{number}: a second row of {key[0]}/{key[1]} (the first is line "
                               f"{seen[key]}); one row per case")
        seen[key] = number
        rows.append(row)
    return rows


def load_env(run: str | Path) -> dict:
    path = Path(run) / "env.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _samples(row: dict | None) -> list[float] | None:
    if row is None or row.get("status") != "ok":
        return None
    return row.get("step_times_s") or None


def speedup(row: dict, baseline: dict | None, name: str) -> dict | None:
    """Speedup of `row` over the baseline (> 1 faster): {"ratio", "ci_low", "ci_high", "paired"}.

    The interleaved A/B measurement inside the case when it was paired with this baseline (its 95 %
    interval over the block pairs, reports.stats.paired_blocks_ratio_ci), or inside the baseline's case
    when that was paired with this row (inverted: a suite whose baseline is fp32 interleaves its seed
    row with fp32, which is fp32's own speedup over seed); otherwise the ratio of the
    two rows' medians, measured in two processes, with no interval: the spread between processes
    (compile and autotuning choices, the GPU's state) is not measured, and the steps' own spread
    would understate it.
    """
    paired = row.get("paired") or {}
    if paired.get("baseline") == name and paired.get("speedup"):
        return {**paired["speedup"], "paired": True}
    if row.get("variant") == name:
        return None
    other = (baseline or {}).get("paired") or {}
    if (baseline or {}).get("status") == "ok" and other.get("baseline") == row.get("variant") \
            and baseline.get("workload") == row.get("workload") \
            and other.get("speedup"):  # the baseline was interleaved with this row: its ratio inverted
        theirs = other["speedup"]
        low, high = theirs.get("ci_low"), theirs.get("ci_high")
        return {**theirs, "ratio": 1 / theirs["ratio"], "ci_low": None if high is None else 1 / high,
                "ci_high": None if low is None else 1 / low, "paired": True}
    a, b = _samples(baseline), _samples(row)
    if not a or not b:
        return None
    return {"ratio": float(np.median(a) / np.median(b)), "ci_low": None, "ci_high": None, "paired": False}


def baselines(rows: list[dict]) -> list[str]:
    """The variants speedups are shown against: seed and fp32, and any other baseline a suite paired its
    rows with (a suite's or workload's `baseline`)."""
    paired = [(r.get("paired") or {}).get("baseline") for r in rows]
    return [SEED, FP32] + list(dict.fromkeys(b for b in paired if b and b not in (SEED, FP32)))


def _rate(value: float | None) -> str:
    """A bandwidth: 2345.6 on a GPU, 0.0437 on a CPU's tiny shapes (not 0.0), never 2.35e+03."""
    return _num(value, ".1f" if value is None or abs(value) >= 1 else ".3g")


def fmt_seconds(s: float | None) -> str:
    if s is None or pd.isna(s):
        return ""
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _fmt_bytes(b: float | None) -> str:
    if b is None or pd.isna(b):
        return ""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def fmt_attention_kernels(counts: dict[str, int]) -> str:
    """A row's `attention_kernels` in words: "efficient ×24, math ×2", or "no SDPA call"."""
    return ", ".join(f"{kernel} ×{n}" for kernel, n in counts.items()) or "no SDPA call"


def fmt_speedup(s: dict | None) -> str:
    """"1.22× [1.18–1.26]" (interleaved A/B, 95 % interval over block pairs), "1.22×*" (two processes,
    no interval), "1.22× (1 pair)" (interleaved once: no interval), "1.22× [1.18–1.26]ᵇ" (a run from
    before block pairs: a bootstrap interval over its interleaved steps)."""
    if not s:
        return ""
    if not s.get("paired"):
        return f"{s['ratio']:.2f}×*"
    if s.get("ci_low") is None:
        return f"{s['ratio']:.2f}× (1 pair)"
    return f"{s['ratio']:.2f}× [{s['ci_low']:.2f}–{s['ci_high']:.2f}]" + ("" if "pairs" in s else "ᵇ")


def quotable(row: dict, baseline: dict | None) -> bool:
    """Whether a speedup between the two rows may be quoted: neither ran into a non-finite loss (a
    diverged step can be fast for the wrong reason, e.g. NaNs skipping work)."""
    return not row.get("warning") and not (baseline or {}).get("warning")


def _speedup_cell(row: dict, baseline: dict | None, name: str) -> str:
    text = fmt_speedup(speedup(row, baseline, name))
    if text and not quotable(row, baseline):
        return f"({text}: non-finite loss{'' if row.get('warning') else f' in {name}'}, not quotable)"
    return text


def _fmt_spread(stats: dict | None) -> str:
    if not stats:
        return ""
    median, p20, p80 = (fmt_seconds(stats[k]) for k in ("median", "p20", "p80"))
    return f"{median} [{p20}–{p80}] n={stats['n']}"


def _fmt_gpu_state(state: dict | None) -> str:
    """"1755/1980 MHz, 61 °C, 452 W" (+ "; HW slowdown" ...) from bench.gpu_state, or "". A summary of
    several samples adds its lowest clock and gives its highest temperature, median clock and power."""
    if not state:
        return ""
    parts = []
    if state.get("sm_clock_mhz") is not None:
        top = f"/{state['max_sm_clock_mhz']:g}" if state.get("max_sm_clock_mhz") else ""
        low = state.get("min_sm_clock_mhz")
        low = f" (min {low:g})" if low is not None and low < state["sm_clock_mhz"] else ""
        parts.append(f"{state['sm_clock_mhz']:g}{top} MHz{low}")
    if state.get("temperature_c") is not None:
        parts.append(f"{'≤' if state.get('samples', 1) > 1 else ''}{state['temperature_c']:g} °C")
    if state.get("power_w") is not None:
        parts.append(f"{state['power_w']:.0f} W")
    if state.get("samples", 1) > 1:
        parts.append(f"{state['samples']} samples")
    slow = "; ".join(state.get("slowdowns") or [])
    return ", ".join(parts) + (f"; {slow}" if slow else "")


def fmt_compile(stats: dict | None) -> str:
    """`compile_stats` in a cell: graphs and breaks, and whether CUDA graphs ran where asked for."""
    if not stats:
        return ""
    text = f"{stats['graphs']} graph{'s' if stats['graphs'] != 1 else ''}, {stats['graph_breaks']} breaks"
    if "cudagraph_skips" in stats:
        skips = stats["cudagraph_skips"]
        text += ", CUDA graphs ✓" if not skips else f", CUDA graphs SKIPPED ×{skips}"
        reasons = stats.get("cudagraph_skip_reasons")
        if reasons:
            text += f" ({reasons[0]})"
    return text


def _fmt_errors(row: dict) -> str:
    """The row's error, or for a row that ran, what failed beside its timing: the parity reference, the
    interleaved A/B pairing (its speedup is then two processes' medians), a trace, the kernel count."""
    if row.get("error"):
        return row["error"][:200]
    parts = [(what, error) for what, error in (
        ("parity reference", (row.get("parity") or {}).get("error")),
        ("gradient parity", (row.get("parity") or {}).get("grad_error")),
        ("A/B pairing", (row.get("paired") or {}).get("error")),
        ("profile", row.get("profile_error")),
        ("attention kernels", row.get("attention_kernels_error")),
    ) if error]
    return "; ".join(f"{what}: {str(error)[:120]}" for what, error in parts)


PARITY_KEYS = ("max_rel_dev", "max_abs_err")  # a row's headline deviation, the first it has
GRAD_KEYS = ("grad_rel_dev",)  # a training row's first-step gradients


def parity_deviation(
    parity: dict | None, keys: tuple[str, ...] = PARITY_KEYS
) -> tuple[str, float | None] | None:
    """(which deviation, its value; None when non-finite: results.jsonl holds null, an older run NaN),
    or None when the row measured none of `keys`."""
    key = next((k for k in keys if k in (parity or {})), None)
    if key is None:
        return None
    dev = parity[key]
    return key, (dev if dev is not None and np.isfinite(dev) else None)


def fmt_dev(dev: float | None) -> str:
    return "non-finite" if dev is None else f"{dev:.1e}"


def _fmt_parity(parity: dict) -> str:
    """The deviation from the reference ("2.2e-04", † when the row notes why it may differ; training rows
    add their first step's gradients: "2.2e-04 · grad 8.1e-03"), "non-finite" when results.jsonl holds
    null for it (or an older run NaN), "" when not measured."""
    headline = parity_deviation(parity)
    if headline is None:
        return ""
    grad = parity_deviation(parity, GRAD_KEYS)
    return fmt_dev(headline[1]) + (f" · grad {fmt_dev(grad[1])}" if grad else "") + (
        "†" if parity.get("note") else "")


def _num(value, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else format(value, fmt)


def _anchor(row: dict) -> str:
    """The ANCHORS.md time of this configuration and how ours compares (ratio > 1: we are slower)."""
    anchor = row.get("anchor_s_per_iter")
    if not anchor:
        return ""
    ours = (row.get("s_per_iter") or {}).get("median")
    return fmt_seconds(anchor) + (f" (ours ×{ours / anchor:.2f})" if ours else "")


# Loader rows: the median wait and the rate over total time differ when workers deliver in
# bursts; the headers say which is which, and the mean wait the rate is made of sits beside.
S_PER_ITER = "s/iter (median [p20–p80])"
LOADER_MEAN = "mean wait / batch"
LOADER_HEADERS = {
    S_PER_ITER: "wait / batch (median [p20–p80])",
    "samples/s": "samples/s (batch / mean wait)",
}


def mean_s_per_batch(row: dict) -> float | None:
    if row.get("mean_s_per_batch") is not None:
        return row["mean_s_per_batch"]
    if row.get("batch") and row.get("samples_per_s"):  # runs from before the field existed
        return row["batch"] / row["samples_per_s"]
    return None


def _extra(row: dict) -> dict:
    """Columns particular to a workload kind."""
    kind = row.get("kind")
    if kind == "train_e2e":
        return {
            "data wait / step": fmt_seconds((row.get("data_wait_s") or {}).get("median")),
            "compute / step": fmt_seconds((row.get("compute_s") or {}).get("median")),
            "wait share": _num(row.get("wait_fraction"), ".0%"),
            "verdict": row.get("verdict", ""),
        }
    if kind == "dataloader":
        return {
            LOADER_MEAN: fmt_seconds(mean_s_per_batch(row)),
            "MB/s delivered": _num(row.get("mb_per_s"), ".1f"),
            "MB/s read": _num(row.get("stored_mb_per_s"), ".1f"),
            "workers": _num(row.get("workers"), "d"),
            "loader": row.get("loader", ""),
            "format": row.get("format", ""),
        }
    if kind == "norm_kernel":
        return {
            "forward": fmt_seconds((row.get("forward_s") or {}).get("median")),
            "backward": fmt_seconds((row.get("backward_s") or {}).get("median")),
            "fwd GB/s": _rate(row.get("forward_gb_per_s")),
            "bwd GB/s": _rate(row.get("backward_gb_per_s")),
            "of copy ceiling": _num(row.get("fraction_of_copy"), ".0%"),
        }
    if kind == "footprint":  # estimated on the CPU: its own columns, never the measured `peak memory`
        top = row.get("estimated_top_modules") or []
        return {
            "estimated peak (CPU estimate, not measured)": _fmt_bytes(row.get("estimated_peak_bytes")),
            "measured peak (ANCHORS.md, H100)": _fmt_bytes(row.get("anchor_peak_bytes")),
            "estimate vs measured": _num(row.get("estimate_vs_anchor"), "+.0%"),
            "peak reached in": " ".join(
                x for x in (row.get("estimated_peak_phase"), row.get("estimated_peak_module")) if x
            ),
            "largest at the peak (estimated)": ", ".join(f"{n} {_fmt_bytes(b)}" for n, b in top[:3]),
            # eager traffic, op by op (profiles.traffic): a floor for a memory-bound eager step
            "GB moved / step (eager, est.)": _num(
                row["estimated_bytes_moved"] / 1e9 if row.get("estimated_bytes_moved") else None, ".1f"
            ),
            "ops / step (eager)": row.get("estimated_ops") or "",
        }
    if kind == "infer":
        return {"TTA": "yes" if row.get("tta") else "no", "volume": "×".join(map(str, row.get("volume", [])))}
    return {}


def workload_table(rows: list[dict]) -> pd.DataFrame:
    """The display table of one workload's rows (all rows of one `workload` name)."""
    by_variant = {r["variant"]: r for r in rows}
    against = baselines(rows)
    records = []
    for row in sorted(rows, key=lambda r: r.get("order", 0)):
        parity = row.get("parity") or {}
        record = {
            "variant": row["variant"],
            "status": row["status"],
            S_PER_ITER: _fmt_spread(row.get("s_per_iter")),
            "first step": fmt_seconds(row.get("first_step_s")),
            "compile": fmt_compile(row.get("compile_stats")),
            **{f"vs {name}": _speedup_cell(row, by_variant.get(name), name) for name in against},
            "samples/s": _num(row.get("samples_per_s"), ".2f"),
            "peak memory": _fmt_bytes(row.get("peak_bytes")),
            "MFU": _num(row.get("mfu"), ".2%"),
            "ANCHORS (H100, stock)": _anchor(row),
            "parity": _fmt_parity(parity),
            "GPU while timed": _fmt_gpu_state(row.get("gpu_during")),
            # older runs sampled the GPU once, after the timed steps
            "GPU at end": "" if row.get("gpu_during") else _fmt_gpu_state(row.get("gpu_state")),
            **_extra(row),
            "error": _fmt_errors(row),
        }
        records.append(record)
    table = pd.DataFrame.from_records(records)
    # Drop columns empty in every row (e.g. MFU for the loader), keep the identifying ones.
    keep = [c for c in table.columns if c in ("variant", "status") or (table[c].astype(str) != "").any()]
    table = table[keep]
    if all(r.get("kind") == "dataloader" for r in rows) and LOADER_MEAN in table.columns:
        order = [c for c in table.columns if c != LOADER_MEAN]
        order.insert(order.index(S_PER_ITER) + 1, LOADER_MEAN)
        table = table[order].rename(columns=LOADER_HEADERS)
    elif all(r.get("kind") == "train_e2e" for r in rows):  # its rate is over all steps, stalls included
        table = table.rename(columns={"samples/s": "samples/s (samples / total step time)"})
    return table


def by_workload(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r.get("order", 0)):
        groups.setdefault(row["workload"], []).append(row)
    return groups
