"""One case in its own process: `python -m bench.case SPEC.json RESULT.json`.

The parent (bench.runner) writes the spec; this process runs the workload and writes the row
fields it measured, or the error, to RESULT.json (atomically). A crash that kills the process
(segfault, the OOM killer) leaves no result, and the parent turns its exit code into the row.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from bench.config import PARAMS, Measure
from bench.hints import error_at, hint_for
from bench.variants import CaseConfig, Unavailable


def case_from_spec(spec: dict):
    from bench.workloads.common import Case

    def pair(value):
        return None if value is None else (value["variant"], CaseConfig.from_dict(value["config"]))

    return Case(
        suite=spec["suite"],
        workload=spec["workload"],
        kind=spec["kind"],
        variant=spec["variant"],
        device=spec["device"],
        params=PARAMS[spec["kind"]](**spec["params"]),
        config=CaseConfig.from_dict(spec["config"]),
        measure=Measure(**spec["measure"]),
        baseline=pair(spec.get("baseline")),
        reference=pair(spec.get("reference")),
        calibration=spec.get("calibration", {}),
        cache_dir=spec.get("cache_dir"),
        data_dir=spec.get("data_dir"),
    )


def run_spec(spec: dict) -> dict:
    """The row fields for `spec`: measured fields and status ok, or status unavailable/error."""
    try:
        if spec["kind"] == "calibrate":
            from bench.env import calibrate

            return {"status": "ok", **calibrate(spec["device"])}
        from bench.workloads import module

        case = case_from_spec(spec)
        if spec.get("reference_only"):  # the runner's: cache the workload's reference, time nothing
            return {"status": "ok", **module(case.kind).cache_reference(case)}
        return {"status": "ok", **module(case.kind).run(case)}
    except Unavailable as err:
        return {"status": "unavailable", "error": str(err)}
    except Exception as err:  # noqa: BLE001 - any failure of the case is its row
        traceback.print_exc()
        row = {"status": "error", "error": error_message(err), "error_at": error_at(err)}
        hint = hint_for(row["error"], row["error_at"])
        return row | ({"hint": hint} if hint else {})


# dynamo's advice appended to every compile error: it would fill the row's error field
_BOILERPLATE = ("Set TORCHDYNAMO_VERBOSE=1", "Set TORCH_LOGS=")


def error_message(err: BaseException, limit: int = 600) -> str:
    """`Type: message`, multi-line messages joined (compiler errors put the cause on a later line)."""
    lines = [
        line.strip() for line in str(err).splitlines()
        if line.strip() and not line.lstrip().startswith(_BOILERPLATE)
    ]
    return f"{type(err).__name__}: {' | '.join(lines)}"[:limit]


REFERENCE_GLOB = "reference-*.json"


def reference_name(workload: str, kind: str, tta: bool) -> str:
    """The name a case's reference is cached under: its workload's, and for inference the TTA setting
    too (the fp32 reference predicts with the variant's TTA: one reference per setting)."""
    return f"{workload}+tta" if kind == "infer" and tta else workload


def reference_cache_path(cache_dir: str | Path, workload: str) -> Path:
    """Where a run caches a workload's reference: a training trajectory (bench.workloads.reference), an
    inference's FLOPs (its probabilities beside, as .pt: bench.workloads.infer)."""
    return Path(cache_dir) / f"reference-{workload.replace('/', '_')}.json"


def reference_cached(cache_dir: str | Path, name: str, kind: str) -> bool:
    """Whether the reference `name` is cached whole: an inference reference's probabilities lie beside
    its JSON (a run folder carried without its .pt files, as gpu_session.sh packs it, has only the JSON)."""
    path = reference_cache_path(cache_dir, name)
    if not path.is_file():
        return False
    if kind != "infer":
        return True
    cached = json.loads(path.read_text())
    # (one without "tta" was made before references were kept per TTA setting: with either)
    return "tta" in cached and (path.with_suffix(".pt").is_file() or "error" in cached)


def write_json_atomic(path: Path, data: dict, indent: int | None = None) -> None:
    """Write to a temp name then rename: a reader never sees half a file (pid: writers never collide)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    tmp.replace(path)


RUNNER_PID_ENV = "SEGBENCH_RUNNER_PID"


def die_with_runner() -> None:
    """End this process when the runner that started it dies, even killed outright (Linux's
    PR_SET_PDEATHSIG): in its own session (out of Ctrl-C's and a closed terminal's reach) nothing
    else would, and it would go on holding the GPU. Set here, not in a preexec_fn at fork time."""
    runner = os.environ.get(RUNNER_PID_ENV)
    if runner is None or sys.platform != "linux":
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(runner):  # the runner died before the prctl
        os._exit(1)


def main(argv: list[str]) -> int:
    die_with_runner()
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    result = run_spec(json.loads(spec_path.read_text()))
    write_json_atomic(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
