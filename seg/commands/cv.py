"""`segbench cv`: k-fold cross-validation (train K folds, score them and their ensemble on the test split)."""

from __future__ import annotations

import argparse
import dataclasses
import sys


def run(args: argparse.Namespace) -> int:
    from seg.cv import run_cv
    from seg.infer import InferConfig
    from seg.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"fold", "resume"}
    values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    values["model_options"] = dict(args.model_options)
    infer_cfg = InferConfig(
        roi=args.roi,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch,
        tta=args.tta,
        precision=args.infer_precision,
    )
    try:
        doc = run_cv(TrainConfig(**values), args.folds, infer_cfg)
    except (FileNotFoundError, ValueError) as err:
        print(f"segbench cv: {err}", file=sys.stderr)
        return 1
    from seg.cv import markdown_table

    print(markdown_table(doc))
    print(f"wrote {args.out}/cv.json and {args.out}/cv.md")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from seg.commands.train import MODELS, _option

    p = subparsers.add_parser(
        "cv",
        help="k-fold cross-validation: train K folds, score each and their ensemble on the test split",
        description="Train one model per fold of DATA/splits.json under OUT/fold<k> (a rerun resumes and "
        "skips finished folds), then predict the test split with each fold's best.pt and with their "
        "ensemble (mean probabilities); region Dice / HD95 in prepared space go to OUT/cv.json and "
        "OUT/cv.md.",
    )
    p.add_argument("--data", dest="data_dir", required=True, help="prepared folder (with splits.json)")
    p.add_argument("--model", choices=MODELS, default="unet", help="model name (default unet)")
    p.add_argument("--out", required=True, help="run folder: fold<k>/, cv.json, cv.md")
    p.add_argument("--folds", type=int, help="folds to train (default: all folds in splits.json)")
    p.add_argument(
        "--model-option",
        dest="model_options",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="seg.models.build override, repeatable (e.g. channels=(8,16,32))",
    )
    train = p.add_argument_group("training (as segbench train; defaults from TrainConfig)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--accum", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--warmup-epochs", type=float)
    train.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    train.add_argument("--workers", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--patch", type=int)
    train.add_argument(
        "--device", help="auto (cuda if present), cpu, cuda or cuda:N; also for the test predictions"
    )
    train.add_argument("--max-steps-per-epoch", type=int)
    test = p.add_argument_group("test-split prediction")
    test.add_argument("--roi", type=int, help="window edge (default: the training patch, else the prep size)")
    test.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    test.add_argument("--sw-batch", type=int, default=4, help="windows per forward pass (default 4)")
    test.add_argument("--tta", action="store_true", help="average over the 8 axis-flip combinations")
    test.add_argument(
        "--infer-precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="autocast for the test predictions (auto: bf16 on CUDA, else fp32)",
    )
    p.set_defaults(func=run)
