"""`segbench data synth|prep|summary|splits`: make, prepare and inspect BraTS data.

Only the standard library at top level: the heavy imports happen when a subcommand runs.
"""

from __future__ import annotations

import argparse


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be X,Y,Z integers, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 16:
        raise argparse.ArgumentTypeError(f"shape must be three integers >= 16, got {text!r}")
    return shape  # type: ignore[return-value]


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _synth(args: argparse.Namespace) -> int:
    from seg.data.synth import write_cases

    if args.seed < 0 or args.cases < 1:
        raise ValueError(f"--seed {args.seed} --cases {args.cases}: the seed is >= 0, the count >= 1")
    folders = write_cases(args.out, args.cases, seed=args.seed, shape=args.shape)
    print(f"wrote {len(folders)} cases of shape {'x'.join(map(str, args.shape))} to {args.out}")
    return 0


def _prep(args: argparse.Namespace) -> int:
    import sys

    from seg.data.cases import discover, no_cases_reason, unmatched_nifti
    from seg.data.prep import PrepConfig
    from seg.data.prep_folder import prepare_all
    from seg.data.splits import write_splits

    cfg = PrepConfig(size=args.size, format=args.format, intensity=args.intensity)
    if not discover(args.src):  # before prepare_all makes --out
        print(no_cases_reason(args.src), file=sys.stderr)
        return 1
    ignored = unmatched_nifti(args.src)
    if ignored:  # a case named otherwise (a native scan, a prediction) would vanish without a word
        shown = ", ".join(str(p.relative_to(args.src)) for p in ignored[:3])
        print(f"ignored {len(ignored)} NIfTI file(s) not named as a BraTS case's (<id>_t1.nii.gz ... or "
              f"<id>-t1n.nii.gz ...): {shown}{', ...' if len(ignored) > 3 else ''}", file=sys.stderr)
    manifest = prepare_all(args.src, args.out, cfg, workers=args.workers)
    cases = manifest["cases"]
    n_failed = sum(e["status"] != "ok" for e in cases)
    n_skipped = sum(bool(e.get("skipped")) for e in cases)
    # keep: a re-run (cases added, or one failing now) moves no case between train, val and test
    splits = write_splits(args.out, seed=args.split_seed, folds=args.folds, keep=True)
    print(f"{len(cases) - n_failed} ok ({n_skipped} already prepared), {n_failed} failed "
          f"-> {args.out}/manifest.json, {splits.name}")
    return 1 if n_failed else 0


def _summary(args: argparse.Namespace) -> int:
    from seg.data.summary import summarize

    try:
        print(summarize(args.dir), end="")
    except ValueError as err:
        raise SystemExit(f"segbench data summary: {err}") from None
    return 0


def _splits(args: argparse.Namespace) -> int:
    from seg.data.splits import write_splits

    fractions = tuple(float(v) for v in args.fractions.split(","))
    print(write_splits(args.dir, seed=args.seed, fractions=fractions, folds=args.folds))
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="make, prepare and inspect BraTS data")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("synth", help="write synthetic BraTS-like cases (BraTS 2021 layout)")
    p.add_argument("--out", required=True, help="folder to write the case folders into")
    p.add_argument("--cases", type=positive_int, required=True, help="number of cases (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--shape", type=_shape, default=(240, 240, 155),
                   help="volume shape X,Y,Z in 1 mm voxels (default 240,240,155 as real BraTS)")
    p.set_defaults(func=_synth)

    p = sub.add_parser("prep", help="the 8-step preprocessing: NIfTI cases -> <id>.pt + manifest.json")
    p.add_argument("--src", required=True, help="folder searched (recursively) for BraTS 2021/2023 cases")
    p.add_argument("--out", required=True, help="folder for <case_id>.pt, manifest.json, splits.json")
    p.add_argument("--size", type=int, default=128, help="output edge S of [4,S,S,S] (default 128)")
    p.add_argument("--format", choices=("pt32", "compact"), default="pt32",
                   help="pt32: float32 image, int64 label; compact: float16, uint8 (default pt32)")
    p.add_argument("--intensity", choices=("minmax", "window", "zscore"), default="minmax",
                   help="per-modality scaling to [0,1]: min-max, fixed 0-3000 window, or brain z-score "
                   "(default minmax)")
    p.add_argument("--workers", type=int, default=1, help="cases prepared in parallel processes (default 1)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of a new splits.json (default 200; a re-run keeps the existing one's)")
    p.add_argument("--folds", type=int, default=None,
                   help="k of a new splits.json's k-fold splits (default 5; a re-run keeps the existing "
                   "one's)")
    p.set_defaults(func=_prep)

    p = sub.add_parser("summary", help="Markdown summary of a prepared folder")
    p.add_argument("dir", help="a `data prep --out` folder")
    p.set_defaults(func=_summary)

    p = sub.add_parser("splits", help="(re)write splits.json of a prepared folder")
    p.add_argument("dir", help="a `data prep --out` folder")
    p.add_argument("--seed", type=int, default=200, help="shuffle seed (default 200)")
    p.add_argument("--fractions", default="0.8,0.1,0.1",
                   help="train,val,test fractions (default 0.8,0.1,0.1)")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold splits over train+val (default 5)")
    p.set_defaults(func=_splits)
