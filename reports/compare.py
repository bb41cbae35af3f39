"""Compare two runs: the same (workload, variant) side by side, regressions flagged.

`change` is how RUN's median step time moved relative to RUN_B's (RUN_B is the "before"):
+10 % means RUN is 10 % slower (loader rows: the mean wait per batch, what samples/s is made of).
A change is a regression when its 95 % bootstrap interval excludes zero and it is over the threshold
(5 %); an improvement likewise in the other direction. The interval covers the steps' spread within
each run, not the spread between runs (not measured): a change near the threshold may be noise;
rerun both to be sure. How much: with a 2 % run-to-run spread (sd; GPU clocks and autotuning choices
can give that), two runs of the same code cross 5 % and get a verdict about 1 time in 9, with 4 %
about 4 in 10 (simulated, 15 steps a run); 10 % (`--threshold 0.1`) flags about 1 in 700 at 2 %.
Runs on other machines (GPU or CPU, torch version) get no verdict, nor do timings either run took
while other processes used more than a fifth of the host's CPUs (`host_other_cpu_fraction`).
Footprint rows (estimates, no samples) compare their estimated peak memory: a growth over the
threshold is a regression. A faster row is no improvement when its numbers moved away from the
reference: parity (the deviation from the fp32 eager reference, of the losses or of the first step's
gradients) that grew more than tenfold to over 1e-3, or turned non-finite, is a regression whatever
the timing says.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from reports.render import COMPARE_FIGURE, Block, to_html, to_markdown, write_atomic
from reports.rows import BUSY_FRACTION, cut_by_budget, machine
from reports.stats import is_improvement, is_regression, relative_change_ci
from reports.tables import (
    GRAD_KEYS,
    PARITY_KEYS,
    fmt_attention_kernels,
    fmt_dev,
    fmt_seconds,
    load_env,
    load_results,
    parity_deviation,
)


def _verdict(change: dict[str, float], threshold: float) -> str:
    if is_regression(change, threshold):
        return "REGRESSION"
    return "improvement" if is_improvement(change, threshold) else "no significant change"


# a parity regression: the deviation grew more than PARITY_FACTOR-fold and past PARITY_FLOOR (fp32 rows
# deviate ~1e-6 and may move by orders of magnitude harmlessly; bf16 rows sit near 1e-2)
PARITY_FACTOR, PARITY_FLOOR = 10.0, 1e-3


def parity_change(ra: dict, rb: dict) -> tuple[str, bool]:
    """("2.0e-04 → 4.0e-01; grad 8.0e-03 → 1.4e+00", whether either is a parity regression) of RUN's
    row against RUN_B's: the loss trajectory's deviation and the first step's gradients'; ("", False)
    when the two rows measured neither alike."""
    parts, worse = [], False
    for keys, label in ((PARITY_KEYS, ""), (GRAD_KEYS, "grad ")):
        pa, pb = parity_deviation(ra.get("parity"), keys), parity_deviation(rb.get("parity"), keys)
        if pa is None or pb is None or pa[0] != pb[0]:
            continue
        before, after = pb[1], pa[1]
        parts.append(f"{label}{fmt_dev(before)} → {fmt_dev(after)}")
        grew = after is not None and before is not None and after > max(PARITY_FACTOR * before, PARITY_FLOOR)
        worse = worse or grew or (before is not None and after is None)
    return "; ".join(parts), worse


def _index(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["workload"], r["variant"]): r for r in rows}


_SETUP_KEYS = ("model", "shape", "sample_shape", "batch", "volume", "roi", "tensor_shape", "estimated_step",
               "overlap")


# params that leave what a row measures as it is: an ANCHORS annotation
_NOT_SETUP = ("anchor_peak_gib",)


def _setup_difference(ra: dict, rb: dict) -> str:
    """What differs between two rows' workload set-ups (runs of other suites share case names): the
    set-up fields rows measure (a loader's sample shape, the data's shape) and their workloads' whole
    `params` where both runs recorded them."""
    diffs = {key: (rb.get(key), ra.get(key)) for key in _SETUP_KEYS
             if ra.get(key) is not None and rb.get(key) is not None and ra.get(key) != rb.get(key)}
    pa, pb = ra.get("params"), rb.get("params")
    if isinstance(pa, dict) and isinstance(pb, dict):
        # train_e2e's batches have the data's shape (rows from before bench.config.recorded_params held it)
        unused = ("shape",) if ra.get("kind") == "train_e2e" else ()
        diffs.update({key: (pb.get(key), pa.get(key)) for key in sorted(pa.keys() | pb.keys())
                      if key not in _NOT_SETUP + unused and key not in diffs and pa.get(key) != pb.get(key)})
    return ", ".join(f"{key} {before} → {after}" for key, (before, after) in diffs.items())


def compare_rows(rows: list[dict], rows_b: list[dict], threshold: float = 0.05,
                 machines: tuple[str, str] | None = None) -> pd.DataFrame:
    """One record per case. `machines` (RUN's, RUN_B's, see `machine`): when they differ, timing rows
    show their change but get no verdict (an H200 is not a regression of an H100's code)."""
    a, b = _index(rows), _index(rows_b)
    other_machine = machines is not None and machines[0] != machines[1]
    keys = list(b) + [k for k in a if k not in b]
    records = []
    for key in keys:
        ra, rb = a.get(key), b.get(key)
        rec = {
            "workload": key[0],
            "variant": key[1],
            "before": fmt_seconds(((rb or {}).get("s_per_iter") or {}).get("median")),
            "after": fmt_seconds(((ra or {}).get("s_per_iter") or {}).get("median")),
            "change": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
        }
        sa, sb = (ra or {}).get("step_times_s"), (rb or {}).get("step_times_s")
        rec["parity"], parity_worse = parity_change(ra or {}, rb or {})  # ("", False) for a row missing
        if ra is None or rb is None:
            rec["verdict"] = "only in " + ("RUN_B" if ra is None else "RUN")
        elif differs := _setup_difference(ra, rb):  # another shape or model: no verdict on the timing
            rec["verdict"] = f"not comparable: {differs}"
        elif cut_by_budget(ra) or cut_by_budget(rb):  # the case did not fail: the run ran out of time
            cut = "RUN" if cut_by_budget(ra) else "RUN_B"
            rec["verdict"] = f"cut by the time budget in {cut}: no verdict"
        elif rb["status"] == "ok" and ra["status"] != "ok":  # e.g. now out of memory: --fail-on-regression
            rec["after"] = ra["status"]
            rec["verdict"] = (f"status ok → {ra['status']} on another machine ({machines[0]}): no verdict"
                              if other_machine else "REGRESSION")
        elif ra["status"] != "ok" or rb["status"] != "ok":
            rec["verdict"] = f"status {rb['status']} → {ra['status']}"
        elif ra.get("estimated_peak_bytes") and rb.get("estimated_peak_bytes"):
            # footprint rows: a deterministic estimate, no samples; the change of the peak itself
            peak_a, peak_b = ra["estimated_peak_bytes"], rb["estimated_peak_bytes"]
            rec["before"], rec["after"] = (f"{p / 2**30:.2f} GiB est. peak" for p in (peak_b, peak_a))
            rec["change"] = peak_a / peak_b - 1
            exact = {"change": rec["change"], "ci_low": rec["change"], "ci_high": rec["change"]}
            # no interval: ci columns stay empty; another torch estimates with other kernels and rules
            rec["verdict"] = (f"other machine ({machines[1]} → {machines[0]}): no verdict" if other_machine
                              else _verdict(exact, threshold))
        elif ra.get("warning") or rb.get("warning"):  # a non-finite loss: its speed is not quotable
            rec["after"] += " (non-finite loss)" if ra.get("warning") else ""
            rec["verdict"] = (
                "non-finite loss in both: no verdict" if ra.get("warning") and rb.get("warning")
                else "losses finite now (were not): no speed verdict" if rb.get("warning")
                else f"non-finite loss now, on another machine ({machines[0]}): no verdict" if other_machine
                else "REGRESSION (non-finite loss)"
            )
        elif not sa or not sb:
            rec["verdict"] = "no step samples"
        else:
            # a loader's rate is its mean wait (workers deliver in bursts); a step's time, its median
            statistic = "mean" if ra.get("kind") == "dataloader" else "median"
            if statistic == "mean":
                rec["before"], rec["after"] = (f"mean {fmt_seconds(sum(s) / len(s))}" for s in (sb, sa))
            change = relative_change_ci(sb, sa, statistic=statistic)
            rec.update(change)
            busy = {name: row["host_other_cpu_fraction"] for name, row in (("RUN_B", rb), ("RUN", ra))
                    if (row.get("host_other_cpu_fraction") or 0) > BUSY_FRACTION}
            if other_machine:
                rec["verdict"] = f"other machine ({machines[1]} → {machines[0]}): no verdict"
            elif busy:  # other processes took CPU time the case's own timing depends on
                shares = ", ".join(f"{share:.0%} in {name}" for name, share in busy.items())
                rec["verdict"] = f"busy host ({shares} of the CPUs used by other processes): no verdict"
            else:
                rec["verdict"] = _verdict(change, threshold)
            if parity_worse:  # a faster wrong answer is no improvement
                rec["verdict"] = (f"{rec['verdict']}; parity worse ({rec['parity']})" if other_machine
                                  else f"REGRESSION (parity {rec['parity']}); speed: {rec['verdict']}")
        records.append(rec)
    columns = ["workload", "variant", "before", "after", "change", "ci_low", "ci_high", "parity", "verdict"]
    return pd.DataFrame.from_records(records, columns=columns)  # columns: a run without rows too


def _in_both(rows: list[dict], rows_b: list[dict], field: str):
    """(case key, RUN_B's value, RUN's value) of `field` for the cases whose rows have it in both runs."""
    a = _index(rows)
    for key, before in _index(rows_b).items():
        after = a.get(key, {})
        if field in before and field in after:
            yield key, before[field], after[field]


def attention_kernel_changes(rows: list[dict], rows_b: list[dict]) -> list[str]:
    """Cases whose attention ran other SDPA kernels in RUN than in RUN_B (a PyTorch or cuDNN upgrade,
    a changed mask or dtype): often the reason for a change of their time or memory."""
    return [
        f"{key[0]}/{key[1]}: {fmt_attention_kernels(old)} → {fmt_attention_kernels(new)}"
        for key, old, new in _in_both(rows, rows_b, "attention_kernels")
        if old != new
    ]


def profile_changes(rows: list[dict], rows_b: list[dict], min_ms: float = 0.05) -> pd.DataFrame | None:
    """Where the time moved, for cases traced in both runs (measure.profile_steps): ms per step by
    category, before and after, the categories that moved by at least `min_ms`, largest first."""
    records = []
    for key, pb, pa in _in_both(rows, rows_b, "profile"):
        if not pa or not pb or pa.get("device") != pb.get("device"):
            continue
        ca, cb = pa["ms_per_step_by_category"], pb["ms_per_step_by_category"]
        moved = [(cat, cb.get(cat, 0.0), ca.get(cat, 0.0)) for cat in dict.fromkeys([*cb, *ca])]
        moved = [m for m in moved if abs(m[2] - m[1]) >= min_ms]
        for cat, ms_b, ms_a in sorted(moved, key=lambda m: -abs(m[2] - m[1])):
            records.append({
                "workload": key[0],
                "variant": key[1],
                "category": cat,
                "before ms/step": f"{ms_b:.2f}",
                "after ms/step": f"{ms_a:.2f}",
                "change ms/step": f"{ms_a - ms_b:+.2f}",
            })
    return pd.DataFrame.from_records(records) if records else None


def _display(table: pd.DataFrame) -> pd.DataFrame:
    out = table[["workload", "variant", "before", "after"]].copy()
    out["change [95% interval]"] = [
        ""
        if pd.isna(r.change)
        else f"{r.change:+.1%} (estimate: no interval)"
        if pd.isna(r.ci_low)
        else f"{r.change:+.1%} [{r.ci_low:+.1%}, {r.ci_high:+.1%}]"
        for r in table.itertuples()
    ]
    if (table["parity"] != "").any():
        out["parity (deviation from fp32 eager)"] = table["parity"]
    out["verdict"] = table["verdict"]
    return out


def _figure(table: pd.DataFrame, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.dropna(subset=["change", "ci_low"])  # timed rows (estimates have no interval)
    if t.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(t) + 1.5))
    labels = [f"{w}/{v}" for w, v in zip(t.workload, t.variant, strict=False)]
    colors = [
        "#C44E52" if v.startswith("REGRESSION") else "#55A868" if v == "improvement" else "#8C8C8C"
        for v in t.verdict
    ]
    # The median of the data can sit just outside the percentile-bootstrap interval: clip at 0.
    err = [((t.change - t.ci_low) * 100).clip(lower=0), ((t.ci_high - t.change) * 100).clip(lower=0)]
    ax.barh(labels, t.change * 100, xerr=err, color=colors, capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(textwrap.fill("change of median step time (loaders: mean wait), %: RUN vs RUN_B, + is "
                                "slower", 60))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_comparison(
    run: str | Path, run_b: str | Path, threshold: float = 0.05
) -> tuple[Path, Path, pd.DataFrame]:
    """RUN/compare.md and RUN/compare.html; returns their paths and the comparison table."""
    run, run_b = Path(run), Path(run_b)
    rows, rows_b = load_results(run), load_results(run_b)
    env_a, env_b = load_env(run), load_env(run_b)
    table = compare_rows(rows, rows_b, threshold, (machine(env_a), machine(env_b)))

    def where(env: dict) -> str:
        cal = env.get("calibration", {})
        sha = (env.get("git") or {}).get("sha")
        return f"{cal.get('gpu') or env.get('cpu', '?')}, git {sha[:10] if sha else 'unknown'}"

    regressions = table[table.verdict.str.startswith("REGRESSION")]
    blocks = [
        Block("h1", f"segbench comparison: {run.resolve().name} vs {run_b.resolve().name}"),
        Block(
            "list",
            [
                f"RUN (after): {run} — {where(env_a)}",
                f"RUN_B (before): {run_b} — {where(env_b)}",
                f"{len(regressions)} regression(s): slower by more than {threshold:.0%} with the "
                "95% bootstrap interval of the change excluding zero (footprint rows: an estimated "
                f"peak grown by more than {threshold:.0%}), ok before and failing now, or a parity "
                f"deviation grown over {PARITY_FACTOR:g}-fold to above {PARITY_FLOOR:g}. The interval "
                "holds each run's step-to-step spread, not the spread between runs, which one run pair "
                "cannot show: near the threshold, rerun both before trusting a verdict",
            ],
        ),
        Block("table", _display(table)),
    ]
    changed = attention_kernel_changes(rows, rows_b)
    if changed:
        blocks += [Block("h2", "Attention kernels that changed (RUN_B → RUN)"), Block("list", changed)]
    moved = profile_changes(rows, rows_b)
    if moved is not None:
        blocks += [
            Block("h2", "Where the time moved (cases traced in both runs, torch.profiler, ms per step)"),
            Block("table", moved),
        ]
    fig = _figure(table, run / "figures" / COMPARE_FIGURE)
    if fig:
        blocks.append(Block("img", fig, alt="compare"))
    else:  # no timed row to draw: no earlier comparison's chart beside this one
        (run / "figures" / COMPARE_FIGURE).unlink(missing_ok=True)
    md = write_atomic(run / "compare.md", to_markdown(blocks, run))
    title = f"{run.resolve().name} vs {run_b.resolve().name}"
    page = write_atomic(run / "compare.html", to_html(blocks, title=title))
    return md, page, table
