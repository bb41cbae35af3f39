"""`segbench demo`: the main job on the embedded synthetic data, end to end.

synth (BraTS-like phantoms) -> prep (the 8 offline steps) -> a summary of what was prepared ->
the `quick` benchmark suite on the prepared data -> report.md / report.html.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synth -> prep -> summary -> quick benchmark suite -> report, under one run folder",
        description=__doc__,
        # the module doc's layout kept, and every option's default shown
        formatter_class=type("DemoHelp", (argparse.RawDescriptionHelpFormatter,
                                          argparse.ArgumentDefaultsHelpFormatter), {}),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (created)")
    parser.add_argument("--cases", type=int, default=8, help="synthetic cases to generate")
    parser.add_argument("--shape", default="96,96,64", help="synthetic volume shape X,Y,Z (voxels)")
    parser.add_argument("--size", type=int, default=48, help="prepared cube size S (S³ voxels)")
    parser.add_argument("--seed", type=int, default=0, help="synthesis seed")
    parser.add_argument("--workers", type=int, default=2, help="processes for prep")
    parser.add_argument("--suite", default="quick", help="benchmark suite to end with")
    parser.add_argument("--skip-bench", action="store_true", help="stop after the data summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from seg.data.prep import PrepConfig
    from seg.data.prep_folder import prepare_all
    from seg.data.splits import write_splits
    from seg.data.summary import summarize
    from seg.data.synth import write_cases

    out: Path = args.out
    raw_dir, prepared_dir = out / "raw", out / "prepared"
    shape = tuple(int(v) for v in args.shape.split(","))
    print(f"[1/4] synthesizing {args.cases} BraTS-like cases {shape} -> {raw_dir}")
    write_cases(raw_dir, args.cases, seed=args.seed, shape=shape)
    print(f"[2/4] preparing them at {args.size}³ -> {prepared_dir}")
    manifest = prepare_all(raw_dir, prepared_dir, PrepConfig(size=args.size), workers=args.workers)
    write_splits(prepared_dir, keep=True)  # as `segbench data prep` does: `segbench train` reads them
    failed = [c for c in manifest["cases"] if c["status"] != "ok"]
    summary = summarize(prepared_dir)
    (out / "data_summary.md").write_text(summary)
    print(f"[3/4] data summary ({out / 'data_summary.md'}):\n{summary}")
    if failed:
        print(f"{len(failed)} case(s) failed to prepare; see the summary above")
        return 1
    if args.skip_bench:
        return 0
    from bench.runner import run_suite

    bench_dir = out / "bench"
    print(f"[4/4] benchmark suite {args.suite!r} on {prepared_dir} -> {bench_dir}")
    run_suite(args.suite, bench_dir, device="cpu", data_dir=prepared_dir)
    print(f"report: {bench_dir / 'report.md'} and {bench_dir / 'report.html'}")
    return 0
