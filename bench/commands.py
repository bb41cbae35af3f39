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


def _list() -> None:
    from bench.config import load_suite, suite_names
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

    try:
        out = run_suite(
            args.suite,
            args.out,
            device=args.device,
            data_dir=args.data,
            only=args.only,
            report=not args.no_report,
            argv=sys.argv,
        )
    except (SuiteError, BenchError) as err:
        print(f"segbench bench: {err}", file=sys.stderr)
        return 2
    print(f"results: {out / 'results.jsonl'}")
    if not args.no_report:
        print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


def run_profile(args: argparse.Namespace) -> int:
    import sys

    from bench.config import SuiteError
    from bench.profile import profile_case

    try:
        return profile_case(args)
    except SuiteError as err:
        print(f"segbench profile: {err}", file=sys.stderr)
        return 2
