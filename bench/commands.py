"""`segbench bench` (run a suite) and `segbench profile` (trace chosen steps of one case)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="run a benchmark suite: workloads x variants -> results.jsonl, env.json, report",
        description="Run a suite (shipped name or TOML file); each case in its own process. Writes "
        "RUN/results.jsonl (one row per case, as measured), RUN/env.json, RUN/report.md, "
        "RUN/report.html and RUN/figures/*.png.",
    )
    bench.add_argument("--suite", help="shipped suite name (see --list) or a suite TOML file")
    bench.add_argument("--out", type=Path, help="run folder (created)")
    bench.add_argument("--device", choices=("cpu", "cuda"), help="default: the suite's device")
    bench.add_argument(
        "--data",
        type=Path,
        help="prepared data (segbench data prep) for loader workloads; default: synthesize tiny data",
    )
    bench.add_argument(
        "--only",
        action="append",
        metavar="WORKLOAD[/VARIANT]",
        help="run only these workloads or cases (repeatable)",
    )
    bench.add_argument(
        "--list", action="store_true", help="list the shipped suites and the variants, then exit"
    )
    bench.add_argument("--no-report", action="store_true", help="skip building the report at the end")
    bench.add_argument(
        "--profile-steps",
        type=int,
        metavar="N",
        help="trace N steps of every train_step/infer case with torch.profiler after its timing (the "
        "suite's measure.profile_steps otherwise; 0: none): RUN/profiles/, the rows' `profile`, the report",
    )
    bench.add_argument(
        "--budget-s",
        type=float,
        metavar="SECONDS",
        help="start no case after SECONDS and give the last one only the time left (the suite's budget_s "
        "when that is smaller): a call of known length (a GPU lease) ends with rows a --resume can finish",
    )
    bench.add_argument(
        "--resume",
        action="store_true",
        help="finish a run cut short (time budget, lease): keep RUN's rows, run only the cases it lacks or "
        "the time budget cut, on the same machine; new variants may be added, a workload whose settings "
        "changed is refused",
    )
    bench.set_defaults(func=run_bench)

    profile = subparsers.add_parser(
        "profile",
        help="torch.profiler traces / Nsight Systems capture of chosen steps of one case",
        description="Profile one (workload, variant) of a suite in its own process, never in a timing run: "
        "torch.profiler with a wait/warmup/active schedule -> Chrome trace (.json.gz), key-averages "
        "table, a time-by-category summary the report shows; --memory adds a CUDA memory snapshot; "
        "--nsys runs the steps under Nsight Systems (or prints the command when nsys is missing).",
    )
    profile.add_argument("--suite", required=True, help="suite name or TOML file")
    profile.add_argument("--workload", required=True, help="workload name in the suite")
    profile.add_argument("--variant", required=True, help="variant name (any registry combination)")
    profile.add_argument(
        "--out", type=Path, required=True, help="run folder; writes RUN/profiles/<workload>__<variant>/"
    )
    profile.add_argument("--device", choices=("cpu", "cuda"), help="default: the suite's device")
    profile.add_argument("--data", type=Path, help="prepared data for loader workloads")
    profile.add_argument("--wait", type=int, default=1, help="profiler schedule: steps skipped")
    profile.add_argument("--warmup", type=int, default=2, help="profiler schedule: steps traced but dropped")
    profile.add_argument("--active", type=int, default=3, help="profiler schedule: steps recorded")
    profile.add_argument("--memory", action="store_true", help="also dump a CUDA memory snapshot (.pickle)")
    profile.add_argument(
        "--emit-nvtx",
        action="store_true",
        help="with --nsys: torch.autograd.profiler.emit_nvtx (an NVTX range per op)",
    )
    profile.add_argument(
        "--nsys",
        action="store_true",
        help="run under nsys profile --capture-range=cudaProfilerApi instead of torch.profiler",
    )
    profile.add_argument("--timeout", type=float, default=1800, help="seconds before the case is stopped")
    profile.set_defaults(func=run_profile)
    register_footprint(subparsers)
    register_env(subparsers)


def register_env(subparsers: argparse._SubParsersAction) -> None:
    env = subparsers.add_parser(
        "env",
        help="what this machine can run: device facts and each speed feature, with why not",
        description="Print the host, torch build and device, and one line per speed feature the harness "
        "measures (torch.compile, CUDA graphs, Triton fused norms, flash attention, bf16, NVTX, Nsight "
        "Systems) with why it cannot run here. --measure adds the matmul rate and copy bandwidth "
        "(the reports' ceilings). Exit status 1 when --device cuda finds no CUDA device.",
    )
    env.add_argument(
        "--device", choices=("cpu", "cuda"), help="default: cuda when PyTorch sees one, else cpu"
    )
    env.add_argument("--measure", action="store_true", help="also measure the matmul rate and copy bandwidth")
    env.add_argument("--json", type=Path, metavar="PATH", help="also write the facts as JSON to PATH")
    env.set_defaults(func=run_env)


def run_env(args: argparse.Namespace) -> int:
    import torch

    from bench.case import write_json_atomic
    from bench.doctor import collect

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = collect(device, measure=args.measure)
    print(report.render())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, report.to_dict(), indent=2)
    return 1 if report.cuda_error else 0


def _list() -> None:
    from bench.suite_file import load_suite, suite_names
    from bench.variants import describe

    print("suites:")
    for name in suite_names():
        suite = load_suite(name)
        cases = suite.cases()
        print(f"  {name:<11} {suite.device:<4} {len(cases):>3} cases  {suite.description}")
        for w in suite.workloads:
            print(f"      {w.name}: {', '.join(w.variants)}")
    print("\nvariants (combine with +, e.g. bf16+channels_last+compile:max-autotune):")
    for name, text in describe():
        print(f"  {name:<16} {text}")


def _suite_with(name: str, profile_steps: int | None, budget_s: float | None):
    """The suite `name` with the command line's --profile-steps and --budget-s."""
    import dataclasses

    from bench.config import SuiteError
    from bench.suite_file import load_suite

    suite = load_suite(name)
    if profile_steps is not None:
        if profile_steps < 0:
            raise SuiteError(f"--profile-steps {profile_steps}: give 0 (none) or more steps")
        for w in suite.workloads:
            w.measure = dataclasses.replace(w.measure, profile_steps=profile_steps)
    if budget_s is not None:
        if not budget_s > 0:
            raise SuiteError(f"--budget-s {budget_s:g}: give a time in seconds > 0")
        suite.budget_s = budget_s if suite.budget_s is None else min(suite.budget_s, budget_s)
    return suite


def run_bench(args: argparse.Namespace) -> int:
    import sys

    from bench.config import SuiteError

    if args.list:
        _list()
        return 0
    if not args.suite or not args.out:
        print("segbench bench: --suite and --out are required (or --list)", file=sys.stderr)
        return 2
    from bench.runner import BenchError, run_suite

    _exit_on_term_and_hangup()
    try:
        suite = args.suite
        if args.profile_steps is not None or args.budget_s is not None:
            suite = _suite_with(args.suite, args.profile_steps, args.budget_s)
        out = run_suite(
            suite,
            args.out,
            device=args.device,
            data_dir=args.data,
            only=args.only,
            report=not args.no_report,
            argv=sys.argv,
            resume=args.resume,
        )
    except (SuiteError, BenchError) as err:
        print(f"segbench bench: {err}", file=sys.stderr)
        return 2
    print(f"results: {out / 'results.jsonl'}")
    if not args.no_report:
        print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


def _exit_on_term_and_hangup() -> None:
    """`timeout` (a lease's end, gpu_session.sh) sends SIGTERM, a closed terminal or dropped ssh SIGHUP:
    as SystemExit they reach the runner's wait, which then ends the running case (its own session,
    out of the terminal's reach) instead of leaving it on the GPU."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup a hangup stays ignored
        signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))


def register_footprint(subparsers: argparse._SubParsersAction) -> None:
    from seg.models import MODEL_NAMES  # standard library only

    fp = subparsers.add_parser(
        "footprint",
        help="will it fit? a training step's peak GPU memory estimated on the CPU, per variant",
        description="Estimate the peak memory (CUDA allocated bytes) of one seed-recipe training step "
        "(DiceCE, fused AdamW, autocast) for each --variant, on the CPU in seconds: the step runs on "
        "fake tensors with CUDA's autocast, attention and dropout kernels (profiles.footprint). "
        "Writes RUN/suite.toml (a one-workload footprint suite: rerun it with segbench bench), "
        "RUN/results.jsonl and RUN/report.md with the peak by category and module. The estimate "
        "leaves out cuDNN workspaces and allocator rounding: it ran 2-19 % under measured H100 "
        "peaks for SwinUNETR and DynUNet, more for small nets. --infer estimates one sliding-window "
        "batch instead (--batch windows of --shape, eval mode, no autograd); --volume X,Y,Z the whole "
        "sliding-window inference of such a volume (stitching buffers included; variant +tta: 8 flips).",
    )
    fp.add_argument("--model", required=True, choices=MODEL_NAMES)
    fp.add_argument(
        "--model-option", action="append", default=[], metavar="KEY=VALUE",
        help="seg.models.build override, repeatable (preset=paper, use_checkpoint=False, ...)",
    )
    fp.add_argument("--shape", default="128,128,128", help="input X,Y,Z (or one edge) in voxels (default "
                    "128,128,128)")
    fp.add_argument("--batch", type=int, default=1, help="samples per step (with --infer: windows per batch; "
                    "default 1)")
    fp.add_argument(
        "--infer", action="store_true",
        help="estimate inference: one sliding-window batch (sw_batch_size = --batch, roi = --shape)",
    )
    fp.add_argument(
        "--volume", metavar="X,Y,Z",
        help="with --infer: estimate the whole inference of a volume this size (e.g. 240,240,155: BraTS), "
        "windows of --shape, --batch per forward, overlap 0.5, Gaussian blending",
    )
    fp.add_argument(
        "--variant", action="append", metavar="VARIANT",
        help="harness variant, repeatable (default: bf16); e.g. seed, fp32, bf16+ckpt, bf16+swin_fast, "
        "bf16+swin_fast+ckpt:encoder1",
    )
    fp.add_argument("--gpu-gib", type=float, help="say whether each variant fits a card of this size")
    fp.add_argument("--out", type=Path, required=True, help="run folder (created)")
    fp.set_defaults(func=run_footprint)


FIT_MARGIN = 1.2  # the estimate ran up to 19 % under measured peaks: ask for that much headroom


def footprint_suite_toml(
    model: str, options: dict, shape: list[int], batch: int, variants: list[str], step: str = "train",
    volume: list[int] | None = None,
) -> str:
    """A one-workload `footprint` suite (TOML) for these settings."""
    import json

    def value(v: object) -> str:  # JSON literals of str/int/float/bool/list are TOML literals too
        return json.dumps(list(v) if isinstance(v, tuple) else v)

    table = ", ".join(f"{k} = {value(v)}" for k, v in options.items())
    return "\n".join(
        [
            'name = "footprint-cli"',
            f'description = "segbench footprint: estimated peak memory of a {step} step"',
            'device = "cpu"',
            'reference = ""',
            "timeout_s = 900",
            "",
            "[[workload]]",
            'kind = "footprint"',
            f"name = {value(model)}",
            f"model = {value(model)}",
            f"model_options = {{ {table} }}",
            f"shape = {value(shape)}",
            f"batch = {batch}",
            f"step = {value(step)}",
            *([f"volume = {value(volume)}"] if volume else []),
            f"variants = {value(variants)}",
            "",
        ]
    )


def run_footprint(args: argparse.Namespace) -> int:
    import sys

    from bench.config import SuiteError
    from bench.run_folder import check_out
    from bench.runner import BenchError, run_suite
    from reports.tables import load_results
    from seg.commands.train import _option

    try:
        edges = [int(v) for v in args.shape.split(",")]
        options = dict(_option(text) for text in args.model_option)
        volume = [int(v) for v in args.volume.split(",")] if args.volume else None
        if volume is not None and (not args.infer or len(volume) != 3):
            raise ValueError(f"--volume {args.volume}: give X,Y,Z, with --infer")
    except (ValueError, argparse.ArgumentTypeError) as err:
        print(f"segbench footprint: {err}", file=sys.stderr)
        return 2
    shape = edges * 3 if len(edges) == 1 else edges
    variants = args.variant or ["bf16"]
    try:
        check_out(args.out, resume=False)  # before suite.toml is written into it
    except BenchError as err:
        print(f"segbench footprint: {err}", file=sys.stderr)
        return 2
    _exit_on_term_and_hangup()
    args.out.mkdir(parents=True, exist_ok=True)
    suite_file = args.out / "suite.toml"
    step = "infer_volume" if volume else "infer" if args.infer else "train"
    text = footprint_suite_toml(args.model, options, shape, args.batch, variants, step, volume)
    suite_file.write_text(text)
    try:
        out = run_suite(suite_file, args.out, device="cpu", argv=sys.argv)
    except (SuiteError, BenchError) as err:
        print(f"segbench footprint: {err}", file=sys.stderr)
        return 2
    size = "x".join(map(str, shape))
    what = f"inference, {args.batch} window(s) of {size}" if args.infer else f"{size} batch {args.batch}"
    if volume:
        vol = "x".join(map(str, volume))
        what = f"inference of a {vol} volume, windows of {size}, {args.batch} per forward"
    print(f"\n{args.model} {what} (CPU estimate of CUDA allocated bytes)")
    rows = load_results(out)
    width = max(len(row["variant"]) for row in rows)
    for row in rows:
        if row.get("status") != "ok":
            print(f"  {row['variant']:<{width}} {row.get('status')}: {row.get('error', '')}"[:200])
            continue
        gib = row["estimated_peak_bytes"] / 2**30
        verdict = ""
        if args.gpu_gib:
            fits = gib * FIT_MARGIN <= args.gpu_gib
            verdict = f"  {'fits' if fits else 'does NOT fit'} in {args.gpu_gib:g} GiB"
            verdict += f" with {FIT_MARGIN:.1f}x headroom"
        moved = row.get("estimated_bytes_moved", 0) / 1e9
        print(
            f"  {row['variant']:<{width}} {gib:6.2f} GiB  peak in {row['estimated_peak_phase']}{verdict}"
            f"  | eager: {moved:.1f} GB moved over {row.get('estimated_ops', 0)} ops"
        )
    print(f"report: {out / 'report.md'}")
    return 1 if any(row.get("status") == "error" for row in rows) else 0  # a bad shape or option


def run_profile(args: argparse.Namespace) -> int:
    import sys

    from bench.config import BenchError, SuiteError
    from bench.profile import profile_case

    if args.active < 1 or args.warmup < 0 or args.wait < 0:
        print(f"segbench profile: --wait {args.wait} --warmup {args.warmup} --active {args.active}: "
              "record at least one step, skip and warm up none or more", file=sys.stderr)
        return 2
    try:
        return profile_case(args)
    except (SuiteError, BenchError) as err:
        print(f"segbench profile: {err}", file=sys.stderr)
        return 2
