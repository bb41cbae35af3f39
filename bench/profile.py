"""`segbench profile`: torch.profiler or Nsight Systems capture of chosen steps of one case.

The parent resolves the case as `segbench bench` would and runs `python -m bench.profile SPEC OUT`
in a process of its own (under `nsys profile` with --nsys). The child builds the workload's step
(`make_step`), runs one untraced first step (compilation, autotuning), then the schedule.
Output: RUN/profiles/<workload>__<variant>/ (trace.json.gz, key_averages.txt, summary.json,
memory_snapshot.pickle, or the .nsys-rep), which `segbench report RUN` folds in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

UNAVAILABLE = 3  # the case process's exit status when the case cannot run on this machine


def profile_dir(run: Path, workload: str, variant: str) -> Path:
    """Where a case's traces go: RUN/profiles/<workload>__<variant>/ (`segbench report` reads them)."""
    from bench.run_folder import file_stem

    return run / "profiles" / file_stem(f"{workload}__{variant}")


def _spec(args: argparse.Namespace) -> tuple[dict, Path]:
    from bench.config import SuiteError
    from bench.run_folder import refuse_source_tree
    from bench.runner import case_spec, prepare_data
    from bench.suite_file import load_suite
    from bench.variants import VariantContext, resolve

    refuse_source_tree(Path(args.out))
    suite = load_suite(args.suite)
    workload = next((w for w in suite.workloads if w.name == args.workload), None)
    if workload is None:
        names = ", ".join(w.name for w in suite.workloads)
        raise SuiteError(f"{suite.path}: no workload {args.workload!r} (have {names})")
    device = args.device or suite.device
    ctx = VariantContext(kind=workload.kind, model=getattr(workload.params, "model", None), device=device)
    try:
        cfg = resolve(args.variant, ctx)  # Unavailable propagates with its reason
    except ValueError as err:  # an unknown or malformed variant name
        raise SuiteError(f"--variant {args.variant}: {err}") from None
    data_dir = args.data
    if data_dir is None and workload.kind in ("train_e2e", "dataloader"):
        data_dir = prepare_data(suite.data, args.out / "data")
    spec = case_spec(suite, workload, args.variant, device, cfg, args.out, data_dir, {})
    spec["baseline"] = None
    spec["profile"] = {
        "wait": args.wait,
        "warmup": args.warmup,
        "active": args.active,
        "memory": args.memory,
        "emit_nvtx": args.emit_nvtx,
    }
    return spec, profile_dir(args.out, workload.name, args.variant)


def profile_case(args: argparse.Namespace) -> int:
    from bench.variants import Unavailable
    from profiles.nsys import nsys_available, nsys_command, render

    try:
        spec, out = _spec(args)
    except Unavailable as err:
        print(f"segbench profile: {args.variant} is unavailable here: {err}", file=sys.stderr)
        return 2
    if spec["device"] == "cuda" and not args.device and not args.nsys:  # --nsys: the command to run there
        import torch

        if not torch.cuda.is_available():  # the suite's device: say how to profile it here anyway
            print("segbench profile: this suite runs on cuda and PyTorch sees no CUDA device here; "
                  "--device cpu profiles the case on the CPU", file=sys.stderr)
            return 2
    if args.nsys and spec["device"] != "cuda":
        print(f"segbench profile: --nsys traces CUDA kernels and this case runs on {spec['device']}: use "
              "--device cuda, or leave out --nsys for a torch.profiler trace", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    child = [sys.executable, "-X", "faulthandler", "-m", "bench.profile", str(spec_path), str(out)]
    if args.nsys:
        spec["profile"]["nsys"] = True
        spec_path.write_text(json.dumps(spec, indent=1))
        command = nsys_command(child, out / "nsys")
        if not nsys_available():  # the spec is written: the command runs it once nsys is installed
            print(f"nsys is not on PATH; with Nsight Systems installed (or its bin/ on PATH), run here:\n"
                  f"{render(command)}")
            return 0
        child = command
    print(f"profiling {spec['workload']}/{spec['variant']} on {spec['device']} -> {out}")
    code = _run_with_timeout(child, args.timeout)
    if code == UNAVAILABLE:  # nothing was profiled: no folder left that looks like a capture
        spec_path.unlink(missing_ok=True)
        for folder in (out, out.parent):  # the case's folder, then RUN/profiles, when empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        return 2
    if code is None:
        print(f"segbench profile: stopped after its --timeout of {args.timeout:g} s", file=sys.stderr)
        return 1
    if code == 0 and not args.nsys:
        # a bench run folder: its report picks the summary up; a fresh folder has no report to fold into
        fold = (f"`segbench report {args.out}` adds the summary to the report"
                if (Path(args.out) / "results.jsonl").is_file() else f"summary: {out / 'summary.json'}")
        print(f"trace: {out / 'trace.json.gz'}; table: {out / 'key_averages.txt'}; {fold}")
    return code


def _run_with_timeout(command: list[str], timeout_s: float | None, grace_s: float = 30.0) -> int | None:
    """The command's exit status, or None when it ran past `timeout_s`. Then its whole process group is
    stopped: SIGINT first, on which nsys writes its report and stops its application, SIGKILL to what
    is left after `grace_s`; killing only the direct child would leave nsys's Python holding the GPU.
    The group is its own session, so a Ctrl-C here is passed on the same way."""
    # a CPU compile's C++ kernels record profiler events only with this set before inductor is imported;
    # without it their time is the "Torch-Compiled Region" event's own and lands in "other"
    env = {"TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE": "1", **os.environ}
    if command[0] == sys.executable:  # not under nsys: the child's parent is this process (die_with_runner)
        from bench.case import RUNNER_PID_ENV

        env[RUNNER_PID_ENV] = str(os.getpid())
    proc = subprocess.Popen(command, start_new_session=True, env=env)
    try:
        return proc.wait(timeout=timeout_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as stop:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(stop, KeyboardInterrupt):
            raise
        return None


def main(argv: list[str]) -> int:
    from bench.case import case_from_spec, die_with_runner
    from bench.variants import Unavailable
    from bench.workloads import module
    from profiles.torch_trace import capture_nsys, capture_torch

    die_with_runner()
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    case = case_from_spec(spec)
    try:
        step, device = module(case.kind).make_step(case)
    except Unavailable as err:  # e.g. a CUDA suite's case on a machine without one
        case_name = f"{spec['workload']}/{spec['variant']}"
        print(f"segbench profile: {case_name} cannot run here: {err}", file=sys.stderr)
        return UNAVAILABLE
    step()  # first step: compilation and autotuning stay out of the schedule
    if spec["profile"].get("nsys"):
        capture_nsys(step, device, spec["profile"])
    else:
        capture_torch(step, device, spec["profile"], out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
