"""Build RUN/report.md, RUN/report.html and RUN/figures/*.png from a run folder's result files.

Reads results.jsonl, env.json, profiles/*/summary.json (from `segbench profile`) and any
pytest-benchmark JSON copied into the run (pytest-benchmark*.json). Imports no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from reports import figures, goals
from reports.method import METHOD
from reports.pytest_bench import pytest_benchmark_table
from reports.render import COMPARE_FIGURE, Block, to_html, to_markdown, write_atomic
from reports.rows import BUSY_FRACTION, cudnn_text, cut_by_budget
from reports.tables import by_workload, fmt_attention_kernels, load_env, load_results, workload_table


def _rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


def _env_lines(env: dict, rows: list[dict] = ()) -> list[str]:
    if not env:
        return ["no env.json in this run folder: device, versions and git of these rows are unknown"]
    cal = env.get("calibration", {})
    versions = env.get("versions", {})
    git = env.get("git", {})
    device = cal.get("gpu") or env.get("cpu") or "?"
    lines = [
        f"device: {env.get('requested_device', cal.get('device', '?'))} — {device}"
        + (f", driver {cal['driver']}" if cal.get("driver") else "")
        + (f", CUDA {cal['torch_cuda']}, cuDNN {cudnn_text(cal['cudnn'])}"
           if cal.get("torch_cuda") and cal.get("gpu") else ""),  # a CPU run on a CUDA build: no CUDA
        f"CPU: {env.get('cpu', '?')}, {env.get('cpu_count', '?')} logical CPUs "
        f"({env.get('cpu_affinity', '?')} usable), torch threads {cal.get('torch_threads', '?')}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"git: {git.get('sha') or 'unknown (not a git checkout)'}"
        + (" (uncommitted changes)" if git.get("dirty") else ""),
        f"command: {env.get('command', '?')}  at {env.get('time_utc', '?')}",
    ]
    for r in env.get("resumed", []):
        gpu = (r.get("calibration") or {}).get("gpu")
        lines.append(
            f"resumed at {r.get('time_utc', '?')}: {r.get('cases', '?')} cases{f' on {gpu}' if gpu else ''} "
            f"(git {(r.get('git') or {}).get('sha', '?')}; command: {r.get('command', '?')})"
        )
    if cal.get("sdpa_order"):
        lines.append(
            f"scaled_dot_product_attention tries, in order: {' > '.join(cal['sdpa_order'])} (the first "
            "kernel whose constraints a call meets runs; rows say which did)"
        )
    if env.get("compile_cache"):
        lines.append(f"torch.compile / Triton caches: {env['compile_cache']}")
    if cal.get("matmul_flops_per_s"):
        lines.append(
            f"measured ceilings: {cal['matmul_dtype']} matmul {_rate(cal['matmul_flops_per_s'])} "
            f"({cal.get('mfu_basis', '')}); copy {cal['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write)"
        )
    guarded = [f"{r['workload']}/{r['variant']}" for r in rows if r.get("cpu_bf16_workaround")]
    # footprint rows are estimates on fake tensors: no convolution ran
    if cal.get("cpu_bf16_conv3d_weight_grad_ok") is False and not all(r.get("estimate") for r in rows):
        lines.append(
            "⚠ this CPU's oneDNN computes wrong bf16 conv3d weight gradients on 2-voxel-wide maps "
            "(seg.cpu_bf16): " + (f"{', '.join(guarded)} ran with oneDNN off — right, but several times "
                                  "slower than this CPU can be" if guarded
                                  else "no case of this run convolved such a map (none ran with oneDNN off)"
                                  if env.get("method")  # a run recent enough to mark its rows
                                  else "no row of this run is marked as run with oneDNN off (rows before "
                                  "2026-11-27 were not marked)")
        )
    return lines


def _describe(rows: list[dict]) -> str:
    r = rows[0]
    parts = [f"kind `{r.get('kind', '?')}`"]
    for key in ("model", "shape", "batch", "volume", "roi", "tensor_shape", "loader", "estimated_step"):
        first = next((x[key] for x in rows if x.get(key) is not None), None)
        if first is not None:
            parts.append(f"{key} {'×'.join(map(str, first)) if isinstance(first, list) else first}")
    return ", ".join(parts)


def _summary(rows: list[dict], planned: list[str] = ()) -> list[str]:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "unavailable")}
    cut = sum(r["status"] == "error" and cut_by_budget(r) for r in rows)
    errors = f"{counts['error'] - cut} error" + (
        f", {cut} cut by the time budget (`segbench bench --resume RUN` runs them)" if cut else "")
    lines = [f"{len(rows)} cases: {counts['ok']} ok, {errors}, {counts['unavailable']} unavailable"]
    measured = {f"{r['workload']}/{r['variant']}" for r in rows}
    missing = [case for case in planned if case not in measured]
    if missing:  # stopped (Ctrl-C, a lease's end) before these: no row says so
        lines.append(f"⚠ {len(missing)} of the run's {len(planned)} planned cases have no row (the run "
                     f"stopped before them: {', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}); "
                     "`segbench bench --resume RUN` runs them")
    busy = [
        r
        for r in rows
        if (r.get("host_other_cpu_fraction") or 0) > BUSY_FRACTION
        and r["status"] == "ok"
        and not r.get("estimate")  # timed rows only

    ]
    if busy:
        worst = max(r["host_other_cpu_fraction"] for r in busy)
        named = [f"{r['workload']}/{r['variant']} {r['host_other_cpu_fraction']:.0%}" for r in busy[:6]]
        lines.append(
            f"⚠ the machine was busy: other processes used up to {worst:.0%} of its CPU time during "
            f"{len(busy)} of {len(rows)} cases ({', '.join(named)}{', ...' if len(busy) > 6 else ''}): "
            "their timings may be inflated and spread; rerun on a quiet machine before quoting them"
        )
    slowed = [(r, states[0]) for r in rows if r["status"] == "ok" and (states := goals.gpu_slowdowns(r))]
    if slowed:
        def why(state: dict) -> str:  # the clock may read [N/A]
            clock = f", {state['sm_clock_mhz']:g} MHz" if state.get("sm_clock_mhz") is not None else ""
            return ", ".join(state["slowdowns"]) + clock

        named = [f"{r['workload']}/{r['variant']} ({why(state)})" for r, state in slowed[:6]]
        lines.append(
            f"⚠ the GPU slowed itself down for heat or a hardware limit while {len(slowed)} case(s) were "
            f"timed ({', '.join(named)}{', ...' if len(slowed) > 6 else ''}): their timings may be low; "
            "check the cooling and rerun them before quoting them"
        )
    for r in rows:
        if r.get("hint"):
            where = f" (raised in {r['error_at']})" if r.get("error_at") else ""
            lines.append(f"✗ {r['workload']}/{r['variant']} failed{where}; try: {r['hint']}")
        if r.get("warning"):
            lines.append(f"⚠ {r['workload']}/{r['variant']}: {r['warning']} — do not quote its speed")
        if r.get("verdict"):
            lines.append(
                f"{r['workload']}/{r['variant']}: {r['verdict']} (the step waited for data "
                f"{r.get('wait_fraction', 0):.0%} of the time)"
            )
    return lines


def _attention_kernels_line(rows: list[dict]) -> str | None:
    """Which SDPA kernel each variant's attention ran (profiles.attention_kernels), when any did."""
    if not any(r.get("attention_kernels") for r in rows):
        return None
    named = "; ".join(
        f"{r['variant']}: {fmt_attention_kernels(r['attention_kernels'])}"
        for r in rows
        if "attention_kernels" in r
    )
    unit = "one inference window's forward" if rows[0].get("kind") == "infer" else "one training step"
    return (f"Attention kernels (scaled_dot_product_attention calls in {unit}, counted eagerly, and the "
            f"kernel PyTorch chose for each; math = the unfused composite): {named}.")


def _trace_summaries(run: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(run.glob("profiles/*/summary.json")):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _trace_table(summaries: dict[str, dict], rows: list[dict] = ()):
    import pandas as pd

    # a traced step runs slower than a timed one (the profiler's own work on the host): its idle
    # share overstates the launch gaps; the row's timed median beside it says by how much
    timed = {}
    for r in rows:
        profile, median = r.get("profile") or {}, (r.get("s_per_iter") or {}).get("median")
        if profile.get("dir") and median:
            timed[Path(profile["dir"]).name] = median
    records = []
    for name, s in summaries.items():
        total = max(s["total_us"], 1e-9)
        steps = max(s.get("steps") or 1, 1)
        rec = {
            "profile": name,
            "device": s.get("device", ""),
            "steps": s.get("steps", ""),
            "time per step": f"{s['total_us'] / steps / 1e3:.2f} ms",
            "timed step": f"{timed[name] * 1e3:.2f} ms" if name in timed else "",
        }
        if "kernels" in s:
            rec["kernels / step"] = f"{s['kernels'] / steps:.0f}"
            rec["idle gaps / step"] = f"{s['idle_gaps'] / steps:.0f}"
        rec.update({c: f"{us / total:.0%}" for c, us in s["categories"].items()})
        records.append(rec)
    return pd.DataFrame.from_records(records).fillna("")


PHASES = ("setup", "first_step", "parity", "timing", "paired", "profile", "attention_kernels")


def _phase_table(rows: list[dict]):
    """Wall seconds by phase of each case that recorded them (bench.measure.Laps), or None."""
    import pandas as pd

    records = []
    for r in rows:
        phases = r.get("phase_s")
        if not phases:
            continue
        rec = {"case": f"{r.get('workload')}/{r.get('variant')}"}
        wall = r.get("case_wall_s")
        rec["wall"] = f"{wall:.1f} s" if wall is not None else ""
        rec["before"] = f"{wall - sum(phases.values()):.1f}" if wall is not None else ""
        # a phase this report does not know (a newer segbench's) gets its own column, so that the
        # phases shown and `before` still add up to the wall time
        names = [*PHASES, *(name for name in phases if name not in PHASES)]
        rec.update({name.replace("_", " "): f"{phases[name]:.1f}" if name in phases else ""
                    for name in names})
        records.append(rec)
    return pd.DataFrame.from_records(records).fillna("") if records else None


def _top_kernels_table(summaries: dict[str, dict], per_profile: int = 5):
    """The kernels (CPU: operators) that took most time in each profile, per step."""
    import pandas as pd

    records = []
    for name, s in summaries.items():
        steps = max(s.get("steps") or 1, 1)
        for t in s.get("top", [])[:per_profile]:
            records.append({
                "profile": name,
                "kernel" if s.get("device") == "cuda" else "operator": t["name"][:100],
                "category": t["category"],
                "ms / step": f"{t['us'] / steps / 1e3:.3f}",
                "calls / step": f"{t['calls'] / steps:g}",
            })
    return pd.DataFrame.from_records(records).fillna("") if records else None


def build_blocks(run: Path, figures_dir: Path, rows: list[dict]) -> list[Block]:
    env = load_env(run)
    suite = (rows[0].get("suite") if rows else None) or env.get("suite", "?")
    blocks = [
        Block("h1", f"segbench report — suite {suite}"),
        Block("h2", "Environment"),
        Block("list", _env_lines(env, rows)),
        Block("h2", "Summary"),
        Block("list", _summary(rows, env.get("planned_cases", []))),
    ]
    if env.get("goals"):
        import pandas as pd

        gpu = (env.get("calibration") or {}).get("gpu")
        checked = [(g, goals.check(g, rows, env.get("anchors") or {}, gpu)) for g in env["goals"]]
        blocks += [
            Block("h2", "Goals"),
            Block("list", [goals.verdict_line(g, records) for g, records in checked]),
            Block("table", pd.DataFrame.from_records(  # a caveat is in its "how" already
                [{k: v for k, v in r.items() if k != "caveat"} for _, records in checked for r in records])),
        ]
    for workload, wrows in by_workload(rows).items():
        blocks += [
            Block("h2", f"Workload {workload}"),
            Block("p", _describe(wrows)),
            Block("table", workload_table(wrows)),
        ]
        attention = _attention_kernels_line(wrows)
        if attention:
            blocks.append(Block("p", attention))
        for draw in (figures.step_times, figures.speedups, figures.memory):
            path = draw(workload, wrows, figures_dir)
            if path:
                blocks.append(Block("img", path, alt=path.stem))
    extra = [
        (figures.loader_vs_compute(rows, figures_dir), "Input pipeline: loader supply vs model consumption"),
        (figures.kernel_bandwidth(rows, figures_dir), "Normalization kernels against the copy ceiling"),
    ]
    for path, title in extra:
        if path:
            blocks += [Block("h2", title), Block("img", path, alt=path.stem)]
    traces = _trace_summaries(run)
    if traces:
        blocks += [Block("h2", "Where the time goes (profiles)"), Block("table", _trace_table(traces, rows))]
        top = _top_kernels_table(traces)
        if top is not None:
            blocks += [Block("p", "Most time per profile (CUDA: kernels by device time; CPU: operators by "
                                  "self time):"), Block("table", top)]
        path = figures.trace_breakdown(traces, figures_dir)
        if path:
            blocks.append(Block("img", path, alt=path.stem))
    phases = _phase_table(rows)
    if phases is not None:
        blocks += [Block("h2", "Case time by phase (s)"), Block("table", phases)]
    for path in sorted(run.glob("pytest-benchmark*.json")):
        table = pytest_benchmark_table(path)
        # measured wherever pytest ran, not necessarily on the Environment's machine
        ran_on = f", ran on {table.attrs['machine']}" if table.attrs.get("machine") else ""
        blocks += [Block("h2", f"Micro-benchmarks ({path.name}, pytest-benchmark{ran_on})"),
                   Block("table", table)]
    blocks.append(Block("h2", "How this was measured"))
    if env.get("method"):  # the text of the segbench that measured the rows
        blocks.append(Block("list", env["method"]))
    else:
        blocks += [Block("p", "This run's env.json predates recorded method text: below is how the "
                              "segbench rendering this report measures; details of this run's may differ."),
                   Block("list", METHOD)]
    for resume in env.get("resumed", []):  # rows a later segbench measured: where its text differs
        changed = [line for line in resume.get("method") or [] if line not in (env.get("method") or METHOD)]
        if changed:
            when = resume.get("time_utc", "?")
            blocks += [Block("p", f"The rows of the resume at {when} were measured by a segbench whose text "
                                  "differs in these points:"), Block("list", changed)]
    return blocks


def build_report(run: str | Path) -> tuple[Path, Path]:
    """Write RUN/report.md, RUN/report.html and RUN/figures/*.png; returns the two report paths."""
    run = Path(run)
    rows = load_results(run)  # before any write: a folder that is not a run fails naming results.jsonl
    figures_dir = run / "figures"
    figures_dir.mkdir(exist_ok=True)
    blocks = build_blocks(run, figures_dir, rows)
    drawn = {Path(b.content).name for b in blocks if b.kind == "img"}
    for old in figures_dir.glob("[!.]*.png"):  # an earlier build's chart of rows no longer there (not
        # another writer's temporary file: a finishing bench and a manual report may build at once)
        if old.name not in drawn and old.name != COMPARE_FIGURE:
            old.unlink(missing_ok=True)
    md = write_atomic(run / "report.md", to_markdown(blocks, run))
    page = write_atomic(run / "report.html", to_html(blocks, title=f"segbench report {run.resolve().name}"))
    return md, page
