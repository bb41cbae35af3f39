"""Run a suite: every (workload, variant) in its own subprocess, one results.jsonl line each.

A case that raises, runs out of memory, fails to compile, crashes the interpreter or outlives its
timeout becomes a row with `status: error` and the message; the suite goes on. Each row is
appended (and flushed) the moment it is known, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.case import (
    RUNNER_PID_ENV,
    reference_cached,
    reference_name,
    write_json_atomic,
)
from bench.config import NEEDS_DATA, BenchError, DataSpec, Suite, Workload, recorded_params
from bench.contention import HostLoad
from bench.env import capture_host
from bench.resume import check_machine, resume_state, resumed_inputs, workload_fingerprints
from bench.run_folder import check_out, clear_old_run, file_stem
from bench.suite_file import load_suite
from bench.variants import Unavailable, VariantContext, resolve
from reports.method import METHOD  # standard library only
from reports.rows import BUDGET_CUT, BUSY_FRACTION

KEEP_CACHE_ENV = "SEGBENCH_KEEP_COMPILE_CACHE"  # =1: cases share your inductor/Triton caches
PAIRED_KINDS = ("train_step",)  # workloads that interleave a baseline when a speedup is quoted


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def keep_compile_cache() -> bool:
    return os.environ.get(KEEP_CACHE_ENV, "0") not in ("", "0")


def _wait_case(spec_path: Path, result_path: Path, log_path: Path, env: dict, timeout_s: float) -> int | None:
    """Run one case process to its end; its exit code, or None when it outlived `timeout_s`."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            # faulthandler: a case killed by a signal (a segfault in a kernel) leaves its stack in the log
            [sys.executable, "-X", "faulthandler", "-m", "bench.case", str(spec_path), str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the case and its loader workers
            proc.wait()
            return None
        except BaseException:  # Ctrl-C never reaches the case's own session: end it with the runner
            with contextlib.suppress(ProcessLookupError):  # it may have ended while wait() was stopped
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


def run_case_process(spec: dict, work: Path, stem: str, timeout_s: float) -> dict:
    """Run `spec` in `python -m bench.case`; the row fields it wrote, or an error built from its exit."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = (
        work / f"{stem}.spec.json",
        work / f"{stem}.result.json",
        work / f"{stem}.log",
    )
    spec_path.write_text(json.dumps(spec, indent=1))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", RUNNER_PID_ENV: str(os.getpid())}
    cold_dir = None
    if not keep_compile_cache():
        # Empty compile caches per case: a first step's compile time is what a user pays the first
        # time, not whatever an earlier case or run left behind (inductor's FX graph cache turned a
        # 129 s CPU compile into 16 s on a rerun of the fast SwinUNETR).
        cold_dir = Path(tempfile.mkdtemp(prefix="segbench-compile-cache-"))
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cold_dir / "inductor")
        env["TRITON_CACHE_DIR"] = str(cold_dir / "triton")
    start = time.perf_counter()
    try:
        code = _wait_case(spec_path, result_path, log_path, env, timeout_s)
    finally:
        if cold_dir is not None:
            shutil.rmtree(cold_dir, ignore_errors=True)
    wall_s = time.perf_counter() - start
    if code is None:
        fields = {"status": "error", "error": f"timeout: the case ran past its {timeout_s:.0f} s limit"}
    elif result_path.is_file():
        fields = json.loads(result_path.read_text())
    else:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if code in (-9, 137):
            how += " (the out-of-memory killer?)"
        tail = _tail(log_path, 40).splitlines()
        # faulthandler's report: its first line names the signal, its last frames where it struck
        fatal = next((i for i, line in enumerate(tail) if line.startswith("Fatal Python error")), None)
        said = "\n".join(tail[fatal:fatal + 4] if fatal is not None else tail[-3:])
        fields = {"status": "error", "error": f"case process died ({how}): {said}"[:1000]}
    fields["case_wall_s"] = round(wall_s, 3)
    fields["log"] = (
        str(log_path.relative_to(work.parent)) if work.parent in log_path.parents else str(log_path)
    )
    return fields


def prepare_data(spec: DataSpec, out: Path, seed: int = 0) -> Path:
    """Synthesize and prepare the suite's tiny data set under `out` (skipped when the same spec is
    already there; a folder reused by a suite with other data is made again)."""
    import shutil

    from seg.data.prep import PrepConfig
    from seg.data.prep_folder import prepare_all
    from seg.data.synth import write_cases

    raw, prepared, made = out / "raw", out / "prepared", out / "data-spec.json"
    wanted = {**asdict(spec), "seed": seed}
    if made.is_file() and json.loads(made.read_text()) != wanted:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(prepared, ignore_errors=True)
    if not (prepared / "manifest.json").is_file():
        write_cases(raw, spec.cases, seed=seed, shape=tuple(spec.shape))
        workers = min(8, os.cpu_count() or 1)
        manifest = prepare_all(raw, prepared, PrepConfig(size=spec.size, format=spec.format), workers=workers)
        if not any(c["status"] == "ok" for c in manifest["cases"]):
            raise BenchError(f"no case of {raw} could be prepared; see {prepared / 'manifest.json'}")
        write_json_atomic(made, wanted)
    return prepared


def json_line(row: dict) -> str:
    """One row as strict JSON: a non-finite float (a diverged parity, a NaN error) becomes null, as
    JSON has no NaN or Infinity and other readers than Python's refuse them."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(row), allow_nan=False) + "\n"


class Results:
    """results.jsonl, one line per row, appended and flushed as each case ends."""

    def __init__(self, path: Path, keep: list[dict] = ()):
        self.path = path
        tmp = path.with_name(f".{path.name}.tmp")  # kept rows (--resume) or nothing, never half a file
        tmp.write_text("".join(json_line(row) for row in keep))
        tmp.replace(path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json_line(row))
            f.flush()
            os.fsync(f.fileno())


def case_spec(
    suite: Suite, w: Workload, variant: str, device: str, cfg, run_dir: Path, data_dir, calib
) -> dict:
    model = getattr(w.params, "model", None)
    ctx = VariantContext(kind=w.kind, model=model, device=device)

    def optional(name: str | None) -> dict | None:
        if not name:
            return None
        try:
            return {"variant": name, "config": resolve(name, ctx).to_dict()}
        except Unavailable:
            return None

    paired = w.baseline and w.interleave and w.kind in PAIRED_KINDS and variant != w.baseline
    return {
        "suite": suite.name,
        "workload": w.name,
        "kind": w.kind,
        "variant": variant,
        "device": device,
        "params": asdict(w.params),
        "config": cfg.to_dict(),
        "measure": asdict(w.measure),
        "baseline": optional(w.baseline) if paired else None,
        "reference": optional(w.reference),
        "calibration": calib,
        "cache_dir": str(run_dir / "cache"),
        "data_dir": str(data_dir) if data_dir else None,
    }


def _summary(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('error', '')}"[:160]
    parts = []
    if "mean_s_per_batch" in row:  # loader rows: samples/s is batch / the mean wait, not the median
        parts.append(f"median {row['s_per_iter']['median'] * 1e3:.2f} ms/batch, "
                     f"mean {row['mean_s_per_batch'] * 1e3:.2f} ms/batch")
    elif "s_per_iter" in row:
        parts.append(f"{row['s_per_iter']['median'] * 1e3:.2f} ms/iter")
    if row.get("samples_per_s"):
        parts.append(f"{row['samples_per_s']:.2f} samples/s")
    if row.get("estimated_peak_bytes"):
        parts.append(f"estimated peak {row['estimated_peak_bytes'] / 2**30:.2f} GiB (CPU estimate)")
    speedup = row.get("paired", {}).get("speedup")
    if speedup:
        parts.append(f"x{speedup['ratio']:.2f} vs {row['paired']['baseline']}")
    busy = row.get("host_other_cpu_fraction") or 0
    if busy > BUSY_FRACTION:
        parts.append(f"(busy host: other processes used {busy:.0%} of the CPUs meanwhile)")
    return "ok " + ", ".join(parts)


def run_suite(
    suite: str | Path | Suite,
    out: str | Path,
    device: str | None = None,
    data_dir: str | Path | None = None,
    only: list[str] | None = None,
    report: bool = True,
    argv: list[str] | None = None,
    resume: bool = False,
) -> Path:
    """Run `suite` into the run folder `out`; returns `out`. `only`: workload or workload/variant names.

    `resume`: finish a run cut short (a time budget, a lease that ended): keep its rows and env.json,
    run only the cases it has no row for or that the time budget cut (reports.rows.cut_by_budget), and
    note the resume in env.json (its own calibration beside the run's). Refused on another machine or
    when a workload with kept rows changed (`workload_fingerprints`)."""
    from tqdm import tqdm

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    names = {name for _, w, v in suite.run_order() for name in (w.name, f"{w.name}/{v}")}
    unknown = [name for name in only or () if name not in names]
    if unknown:  # a typo would otherwise run nothing and exit 0
        raise BenchError(
            f"--only {', '.join(unknown)}: no such workload or workload/variant in suite {suite.name} "
            f"(workloads: {', '.join(sorted({w.name for w in suite.workloads}))})"
        )
    out = Path(out)
    check_out(out, resume)
    old_env, kept = resume_state(out, suite) if resume else (None, [])
    if old_env is not None:
        device, data_dir = resumed_inputs(out, old_env, device, data_dir)
    asked = "--device" if device else f"suite {suite.name}'s device"  # for the calibration's error
    device = device or suite.device
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["workload"], r["variant"]) for r in kept}
    chosen = [(i, w, v) for i, w, v in suite.run_order()
              if not only or w.name in only or f"{w.name}/{v}" in only]
    cases = [(i, w, v) for i, w, v in chosen if (w.name, v) not in done]
    if resume:
        print(f"resuming {out}: {len(kept)} rows kept, {len(cases)} cases to run")
    started = time.perf_counter()  # the budget covers calibration and data preparation too
    env = {
        "suite": suite.name,
        "suite_file": str(suite.path),
        "requested_device": device,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,  # None: synthesized under RUN/data
        **capture_host(argv),
        "compile_cache": "warm: the user's caches" if keep_compile_cache() else "cold: empty per case",
        "anchors": suite.anchors,  # the report's goal checks fall back on them
        "workload_fingerprints": workload_fingerprints(suite),  # what a --resume must find unchanged
        "goals": [asdict(g) for g in suite.goals],
        # the cases this run set out to measure: a report tells a run stopped short from a whole one
        "planned_cases": [f"{w.name}/{v}" for _, w, v in chosen],
        "method": METHOD,  # how these rows were measured, by this segbench: a later re-render keeps it
    }
    # Calibrate first: a device that cannot run (--device cuda without a GPU) leaves only the
    # calibration log behind, not an env.json and an empty results.jsonl that look like a run, and
    # an earlier run in the folder as it was.
    calib = run_case_process({"kind": "calibrate", "device": device}, out / "cases", "calibrate", 300)
    if calib.get("status") != "ok":
        raise BenchError(f"cannot measure the {device} device ({asked}): {calib.get('error')} (log: "
                         f"{out / calib['log']})")
    if not resume and (out / "results.jsonl").is_file():
        clear_old_run(out)
    (out / "figures").mkdir(exist_ok=True)
    calibration = {k: v for k, v in calib.items() if k not in ("status", "log", "case_wall_s")}
    env["calibration"] = calibration
    if old_env is not None:  # the run's own facts stay; the resume is one more entry
        check_machine(out, old_env, env)
        resumed = {k: env[k] for k in ("time_utc", "command", "git", "calibration", "method")}
        # workloads the suite gained since (their rows' settings, for the next resume's check), and
        # the suite's goals and anchors as they are now (the report judges the rows by them)
        fingerprints = {**old_env.get("workload_fingerprints", {}), **env["workload_fingerprints"]}
        resumes = [*old_env.get("resumed", []), {**resumed, "cases": len(cases)}]
        # what was planned and is still in the suite or ran, and what this resume plans (a case since
        # dropped from the suite and never run is no longer planned: no resume would run it)
        keep = {f"{r['workload']}/{r['variant']}" for r in kept}
        keep |= {f"{w.name}/{v}" for _, w, v in suite.run_order()}
        planned = list(dict.fromkeys([*(c for c in old_env.get("planned_cases", []) if c in keep),
                                      *env["planned_cases"]]))
        env = {**old_env, "workload_fingerprints": fingerprints, "goals": env["goals"],
               "anchors": env["anchors"], "resumed": resumes, "planned_cases": planned}
    write_json_atomic(out / "env.json", env, indent=2)
    results = Results(out / "results.jsonl", keep=kept)

    if data_dir is None and any(w.kind in NEEDS_DATA for _, w, _ in cases):
        print(f"no --data given: synthesizing {suite.data.cases} tiny cases into {out / 'data'}")
        data_dir = prepare_data(suite.data, out / "data")

    def budget_left() -> float | None:
        return None if suite.budget_s is None else suite.budget_s - (time.perf_counter() - started)

    references_tried: set[str] = set()
    bar = tqdm(cases, desc=suite.name, unit="case", dynamic_ncols=True)
    for index, w, variant in bar:
        bar.set_postfix_str(f"{w.name}/{variant}")
        row = {
            "suite": suite.name,
            "workload": w.name,
            "kind": w.kind,
            "variant": variant,
            "order": index,
            "device": device,
            "params": recorded_params(w.params),  # the workload's set-up: a compare names what differs
        }
        remaining = budget_left()
        try:
            ctx = VariantContext(kind=w.kind, model=getattr(w.params, "model", None), device=device)
            cfg = resolve(variant, ctx)
            if cfg.workers is not None and "workers" in row["params"]:
                row["params"]["workers"] = cfg.workers  # what the case ran with: a workers:N variant's count
        except Unavailable as err:
            row.update(status="unavailable", error=str(err))
        except ValueError as err:
            row.update(status="error", error=str(err))
        else:
            spec = case_spec(suite, w, variant, device, cfg, out, data_dir, calibration)
            stem = file_stem(f"{index:03d}-{w.name}-{variant}")
            needs_reference = w.kind == "train_step" or (w.kind == "infer" and w.reference
                                                          and w.measure.parity_steps)
            ref_name = reference_name(w.name, w.kind, cfg.tta)
            if (needs_reference and ref_name not in references_tried
                    and (remaining is None or remaining > 10)
                    and not reference_cached(out / "cache", ref_name, w.kind)):
                references_tried.add(ref_name)  # once: a reference that died is left to the cases
                # the reference trajectory in a process of its own, so no row's first step finds the
                # libraries (cuDNN, cuBLAS) warmed by it: every row's first_step_s is cold alike
                run_case_process({**spec, "reference_only": True}, out / "cases", f"{stem}-reference",
                                 w.timeout_s if remaining is None else min(w.timeout_s, remaining))
                remaining = budget_left()
            if remaining is not None and remaining <= 10:
                row.update(
                    status="error",
                    error=f"not run: {BUDGET_CUT} of {suite.budget_s:.0f} s was spent",
                )
            else:
                timeout = w.timeout_s if remaining is None else min(w.timeout_s, remaining)
                with HostLoad() as load:
                    row.update(run_case_process(spec, out / "cases", stem, timeout))
                if timeout < w.timeout_s and str(row.get("error", "")).startswith("timeout:"):
                    row["error"] = (f"timeout: {BUDGET_CUT} of {suite.budget_s:.0f} s ran out "
                                    f"{timeout:.0f} s into the case (its own limit: {w.timeout_s:.0f} s)")
                if load.other_cpu_fraction is not None:
                    row["host_other_cpu_fraction"] = load.other_cpu_fraction
        anchor = suite.anchors.get(f"{w.name}/{variant}")
        if anchor is not None:
            row["anchor_s_per_iter"] = anchor
        results.append(row)
        tqdm.write(f"  {w.name}/{variant}: {_summary(row)}")
    bar.close()

    if report:
        from reports.build import build_report

        build_report(out)
    return out
