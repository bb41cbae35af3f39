"""`segbench ensemble`: label maps from the mean of several `segbench infer --save-probabilities` runs."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from seg.commands.infer import report_cases
    from seg.ensemble import ensemble_folders

    try:
        summary = ensemble_folders(args.probs, args.out, args.min_et_mm3)
    except FileNotFoundError as err:
        print(f"segbench ensemble: {err}", file=sys.stderr)
        return 1
    return report_cases("ensemble", summary["cases"], f"written to {args.out}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help="label maps from the mean probabilities of several `infer --save-probabilities` runs",
        description="Average each case's saved probabilities (OUT/<id>_probs.pt of `segbench infer "
        "--save-probabilities`, prepared grid) over the folders, each run counting once, and write "
        "OUT/<id>_pred.nii.gz on the case's original grid and label convention, as `segbench infer` does.",
    )
    p.add_argument("--probs", nargs="+", required=True, metavar="DIR",
                   help="folders of `segbench infer --save-probabilities`; one alone gives its label maps "
                   "again (e.g. with another --min-et-mm3)")
    p.add_argument("--out", required=True, help="output folder for <case_id>_pred.nii.gz and ensemble.json")
    p.add_argument("--min-et-mm3", type=float, default=0.0, metavar="MM3",
                   help="a predicted enhancing tumour smaller than this becomes necrotic core (0: off)")
    p.set_defaults(func=run)
