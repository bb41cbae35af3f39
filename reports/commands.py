"""`segbench report RUN [--compare RUN_B] [--pytest-benchmark FILE.json]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rebuild a run's report.md/report.html/figures; compare two runs",
        description="Rebuild RUN/report.md, RUN/report.html and RUN/figures/*.png from RUN/results.jsonl "
        "(no torch needed). With --compare RUN_B, also write RUN/compare.md and RUN/compare.html: "
        "each (workload, variant) of both runs side by side, RUN_B as the 'before'.",
    )
    parser.add_argument("run", type=Path, help="run folder written by `segbench bench`")
    parser.add_argument("--compare", type=Path, metavar="RUN_B", help="an earlier run to compare RUN with")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="smallest change flagged as a regression (fraction, default 0.05; the interval does not hold "
        "the run-to-run spread: on a GPU 0.1 keeps false flags rare)",
    )
    parser.add_argument(
        "--pytest-benchmark",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.json",
        help="fold pytest-benchmark --benchmark-json output into the report (copied into RUN)",
    )
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit with status 1 when the comparison flags a regression",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil
    import sys

    from reports.build import build_report
    from reports.pytest_bench import pytest_benchmark_table
    from reports.tables import ResultsError, load_results

    try:
        if args.compare:
            load_results(args.compare)  # a bad RUN_B fails before RUN's report is rewritten
        for path in args.pytest_benchmark:
            pytest_benchmark_table(path)  # validate before copying
            shutil.copyfile(path, args.run / f"pytest-benchmark-{path.stem}.json")
        md, page = build_report(args.run)
        print(f"report: {md} and {page}")
        if args.compare:
            from reports.compare import write_comparison

            cmd, chtml, table = write_comparison(args.run, args.compare, args.threshold)
            flagged = table[table.verdict.str.startswith("REGRESSION")]
            for r in flagged.itertuples():
                change = "" if r.change != r.change else f" ({r.change:+.1%})"  # NaN: it fails now
                print(f"REGRESSION {r.workload}/{r.variant}: {r.before} -> {r.after}{change}")
            print(f"comparison: {cmd} and {chtml} ({len(flagged)} regression(s))")
            if args.fail_on_regression and len(flagged):
                return 1
    except (ResultsError, ValueError, FileNotFoundError) as err:
        print(f"segbench report: {err}", file=sys.stderr)
        return 2
    return 0
