"""`segbench bench --resume`: whether a run folder may be continued, and what of it to keep.

A resume keeps the rows of a run cut short and runs the rest, so everything its rows depend on must
be what it was: the suite, the device and data, the machine (GPU or CPU, torch) and each workload's
settings (`workload_fingerprints`, stored in env.json). Rows the time budget cut run again; a case
that hit its own timeout stays as it ended.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from bench.case import reference_cache_path, reference_name
from bench.config import BenchError, Suite
from reports.rows import cut_by_budget, machine


def _settings(obj) -> dict:
    """A dataclass's fields that differ from their defaults (nested too): a field added to the code
    later, left at its default, changes no fingerprint."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _settings(value)
        elif f.default is not dataclasses.MISSING and value == f.default:
            continue
        elif f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        out[f.name] = value
    return out


def workload_fingerprints(suite: Suite) -> dict[str, str]:
    """{workload: hash of what its rows' numbers depend on}: kind, params, measure, reference, baseline
    and the synthesized data; not its variants (a resume may add some), its timeout, or how many steps
    are traced after the timing (--profile-steps)."""
    data = _settings(suite.data)
    fingerprints = {}
    for w in suite.workloads:
        measure = {k: v for k, v in _settings(w.measure).items() if k != "profile_steps"}
        what = {"kind": w.kind, "params": _settings(w.params), "measure": measure, "reference": w.reference,
                "baseline": w.baseline, "interleave": w.interleave, "data": data}
        text = json.dumps(what, sort_keys=True, default=str)
        fingerprints[w.name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return fingerprints


def resume_state(out: Path, suite: Suite) -> tuple[dict, list[dict]]:
    """(env.json, the rows to keep) of the run being resumed; cases without a kept row run again."""
    try:
        env = json.loads((out / "env.json").read_text())
        lines = [line for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines[:-1]]
        try:
            rows += [json.loads(line) for line in lines[-1:]]
        except json.JSONDecodeError:  # a row cut mid-write (a copy taken while it was appended): rerun it
            print(f"--resume: the last line of {out / 'results.jsonl'} is cut short; its case runs again",
                  file=sys.stderr)
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(
            f"--resume: {out} is not a readable run folder ({err}); a new run into another --out leaves it "
            "as it is (one into this folder replaces it)"
        ) from err
    if env.get("suite") != suite.name:
        raise BenchError(f"--resume: {out} is a run of suite {env.get('suite')!r}, not {suite.name!r}")
    keep = [r for r in rows if not cut_by_budget(r)]  # a case's own timeout stays: it would hang again
    old, new = env.get("workload_fingerprints") or {}, workload_fingerprints(suite)
    changed = {name for name in old.keys() & new.keys() if old[name] != new[name]}
    kept_changed = sorted({r["workload"] for r in keep} & changed)
    if kept_changed:  # its kept rows and the new rows would not agree
        raise BenchError(f"--resume: workload(s) {', '.join(kept_changed)} of {out} changed in the suite "
                         "since they ran (parameters, measurement or reference): start a new run")
    for name in changed:  # no rows kept, but its references may be cached from before
        for cached in {reference_name(name, "infer", tta) for tta in (False, True)}:
            path = reference_cache_path(out / "cache", cached)
            path.unlink(missing_ok=True)
            path.with_suffix(".pt").unlink(missing_ok=True)
    return env, keep


def resumed_inputs(out: Path, env: dict, device: str | None, data_dir) -> tuple[str | None, str | None]:
    """The device and data the resumed run measured (its rows must not mix others in); BenchError when
    the resume names different ones."""
    old_device, old_data = env.get("requested_device"), env.get("data_dir")
    if device and old_device and device != old_device:
        raise BenchError(f"--resume: {out} ran on {old_device}; resume it there, not on {device}")
    if data_dir and str(Path(data_dir).resolve()) != (old_data or str((out / "data" / "prepared").resolve())):
        raise BenchError(f"--resume: {out} measured the data in {old_data or out / 'data'}, not {data_dir}")
    return device or old_device, data_dir or old_data


def check_machine(out: Path, old_env: dict, env: dict) -> None:
    """BenchError when this session's machine (GPU or CPU and its torch threads, torch) or its
    compile caches are not the run's: one run's rows, one set-up, since its ratios cross rows."""
    if machine(env) != machine(old_env):
        raise BenchError(
            f"--resume: {out} was measured on {machine(old_env)}, this is {machine(env)}; its rows "
            "would mix two machines (a cross-row speedup would compare them): start a new run"
        )
    old_cache, cache = old_env.get("compile_cache"), env.get("compile_cache")
    if old_cache and cache != old_cache:  # first steps (compile times) would mix cold and warm
        raise BenchError(f"--resume: {out} ran with compile caches {old_cache}; this session's are "
                         f"{cache} (SEGBENCH_KEEP_COMPILE_CACHE): resume with the run's setting")
