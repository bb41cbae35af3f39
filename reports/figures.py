"""matplotlib charts of a run: step times, memory, speedups, loader vs compute, kernel GB/s, traces.

Each function draws one figure from rows and returns the PNG path it wrote (or None when the
rows hold nothing to draw).
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.render import replacing  # noqa: E402
from reports.tables import baselines, mean_s_per_batch, quotable, speedup  # noqa: E402

COLORS = {"ok": "#4C72B0", "seed": "#DD8452", "fp32": "#8C8C8C"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def _ok(rows: list[dict], key: str) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get(key) is not None]


def _color(variant: str) -> str:
    return COLORS.get(variant, COLORS["ok"])


def _slug(name: str) -> str:
    """A file name for a workload; one that needed characters replaced gets a short hash of the name, so
    "a b" and "a_b" do not draw into one file."""
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return slug if slug == name else f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def step_times(workload: str, rows: list[dict], out: Path) -> Path | None:
    rows = _ok(rows, "s_per_iter")
    if not rows:
        return None
    med = [r["s_per_iter"]["median"] * 1e3 for r in rows]
    low = [max(0.0, m - r["s_per_iter"]["p20"] * 1e3) for m, r in zip(med, rows, strict=False)]
    high = [max(0.0, r["s_per_iter"]["p80"] * 1e3 - m) for m, r in zip(med, rows, strict=False)]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    names = [r["variant"] for r in rows]
    ax.barh(names, med, xerr=[low, high], color=[_color(n) for n in names], capsize=3)
    ax.invert_yaxis()
    if all(r.get("kind") == "dataloader" for r in rows):  # its samples/s follows the mean wait
        means = [mean_s_per_batch(r) for r in rows]
        ax.scatter([m * 1e3 for m in means if m], [n for n, m in zip(names, means, strict=True) if m],
                   marker="D", color="k", zorder=3, label="mean (samples/s = batch / mean)")
        ax.legend(fontsize=7)
        ax.set_xlabel("ms wait per batch (median, bars p20–p80)")
        ax.set_title(f"{workload}: wait per batch")
    else:
        ax.set_xlabel("ms per iteration (median, bars p20–p80)")
        ax.set_title(f"{workload}: time per iteration")
    return _save(fig, out / f"{_slug(workload)}_s_per_iter.png")


def memory(workload: str, rows: list[dict], out: Path) -> Path | None:
    rows = _ok(rows, "peak_bytes")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    names = [r["variant"] for r in rows]
    ax.barh(names, [r["peak_bytes"] / 2**30 for r in rows], color=[_color(n) for n in names])
    reserved = [
        (n, r.get("peak_reserved_bytes"))
        for n, r in zip(names, rows, strict=False)
        if r.get("peak_reserved_bytes")
    ]
    if reserved:
        ax.scatter(
            [b / 2**30 for _, b in reserved],
            [n for n, _ in reserved],
            marker="|",
            s=200,
            color="k",
            label="reserved",
            zorder=3,
        )
        ax.legend(loc="lower right")
    ax.invert_yaxis()
    kind = rows[0].get("peak_kind", "")
    ax.set_xlabel(
        "GiB, " + ("CUDA peak allocated" if kind.startswith("cuda") else "peak RSS of the case process"
                   + (" (its whole life: no reset)" if kind.endswith("lifetime") else ""))
    )
    ax.set_title(f"{workload}: peak memory")
    return _save(fig, out / f"{_slug(workload)}_memory.png")


def speedups(workload: str, rows: list[dict], out: Path) -> Path | None:
    by = {r["variant"]: r for r in rows}
    series = []
    for name in baselines(rows):
        points = [(r["variant"], speedup(r, by.get(name), name)) for r in _ok(rows, "s_per_iter")
                  if quotable(r, by.get(name))]  # a diverged row's speed is no win
        points = [(v, s) for v, s in points if s]
        if points:
            series.append((name, points))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 0.45 * len(rows) + 1.6), squeeze=False)
    for ax, (name, points) in zip(axes[0], series, strict=False):
        ratios = [s["ratio"] for _, s in points]
        nan = float("nan")  # no error bar, not even its caps, where there is no interval
        err = [  # (two processes' medians, or a single block pair)
            [max(0.0, s["ratio"] - s["ci_low"]) if s.get("ci_low") is not None else nan for _, s in points],
            [max(0.0, s["ci_high"] - s["ratio"]) if s.get("ci_high") is not None else nan for _, s in points],
        ]
        ax.barh(
            [v if s.get("paired") else f"{v} *" for v, s in points],
            ratios,
            xerr=err,
            capsize=3,
            color=["#55A868" if r >= 1 else "#C44E52" for r in ratios],
        )
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_title(f"vs {name}")
        ax.set_xlabel(f"speedup vs {name} (> 1: faster)")
    fig.suptitle(f"{workload}: speedups")
    # the method once, wrapped to the figure's width: one long label per panel overlapped the next
    fig.supxlabel(textwrap.fill("bars: interleaved A/B blocks in one process, 95% interval over block "
                                "pairs; * two processes' medians, no interval", 55 * len(series)),
                  fontsize="small")
    return _save(fig, out / f"{_slug(workload)}_speedup.png")


def matched_consumers(
    supply: list[dict], demand: list[dict], top: int = 4
) -> tuple[list[dict], list[dict]]:
    """(loader rows, the fastest `top` train_step rows) on samples of one spatial shape: a step on 96³
    patches consumes samples at another rate than one on whole 128³ volumes. The shape is the one
    most loader rows deliver."""
    shape_of = {id(r): tuple(r["sample_shape"][1:]) for r in supply if r.get("sample_shape")}
    if not shape_of:
        return [], []
    shapes = list(shape_of.values())
    shape = max(shapes, key=shapes.count)
    same = [r for r in demand if tuple(r.get("shape") or ()) == shape]
    loaders = [r for r in supply if shape_of.get(id(r)) == shape]
    return loaders, sorted(same, key=lambda r: -r["samples_per_s"])[:top]


def loader_vs_compute(rows: list[dict], out: Path) -> Path | None:
    """Loader supply (dataloader rows) against what the model consumes (train_step rows on samples of
    the same shape), samples/s."""
    supply = _ok([r for r in rows if r.get("kind") == "dataloader"], "samples_per_s")
    steps = _ok([r for r in rows if r.get("kind") == "train_step"], "samples_per_s")
    supply, demand = matched_consumers(supply, steps)
    if not supply or not demand:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(supply) + 2))
    ax.barh(
        [f"{r['workload']}/{r['variant']}" for r in supply],
        [r["samples_per_s"] for r in supply],
        color="#8172B3",
        label="loader supplies",
    )
    for i, r in enumerate(demand):
        label = f"{r['workload']}/{r['variant']} consumes"
        ax.axvline(r["samples_per_s"], ls="--", color=plt.cm.tab10(i), label=label)
    rates = [r["samples_per_s"] for r in supply + demand]
    if max(rates) / min(rates) > 30:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("samples/s")
    shape = "×".join(map(str, demand[0]["shape"]))
    ax.set_title(f"input pipeline supply vs model consumption, samples of {shape}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out / "loader_vs_compute.png")


def kernel_bandwidth(rows: list[dict], out: Path) -> Path | None:
    rows = _ok([r for r in rows if r.get("kind") == "norm_kernel"], "forward_gb_per_s")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(rows) + 1.6))
    names = [f"{r['workload']}/{r['variant']}" for r in rows]
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["forward_gb_per_s"] for r in rows], height=0.4, label="forward")
    ax.barh(
        [i + 0.2 for i in y], [r.get("backward_gb_per_s") or 0 for r in rows], height=0.4, label="backward"
    )
    ceiling = rows[0].get("copy_gb_per_s")
    if ceiling:
        ax.axvline(ceiling, color="k", ls="--", label=f"measured copy {ceiling:.0f} GB/s")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("achieved GB/s (bytes that must move / time)")
    ax.set_title("normalization kernels against the copy ceiling")
    ax.legend(fontsize=8)
    return _save(fig, out / "norm_kernel_gbps.png")


def trace_breakdown(summaries: dict[str, dict], out: Path) -> Path | None:
    """Stacked bars: share of device time per category, one bar per profiled case."""
    if not summaries:
        return None
    cats: list[str] = []
    for s in summaries.values():
        cats += [c for c in s["categories"] if c not in cats]
    fig, ax = plt.subplots(figsize=(9.5, max(0.5 * len(summaries) + 1.8, 0.22 * len(cats) + 1.0)))
    left = [0.0] * len(summaries)
    names = list(summaries)
    for i, cat in enumerate(cats):
        shares = [summaries[n]["categories"].get(cat, 0) / max(summaries[n]["total_us"], 1e-9) for n in names]
        ax.barh(names, shares, left=left, label=cat, color=plt.cm.tab10(i % 10))
        left = [a + b for a, b in zip(left, shares, strict=False)]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the profiled steps' time")
    ax.set_title("where the time goes (torch.profiler)")
    # beside the bars: below them it covered the axis label
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out / "trace_breakdown.png")
