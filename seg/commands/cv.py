"""`segbench cv`: k-fold cross-validation (train K folds, score them and their ensemble on the test split)."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from seg.commands.train import config_values
    from seg.cv import run_cv
    from seg.infer import InferConfig
    from seg.train import TrainConfig

    if args.tune_min_et and args.min_et_mm3:
        raise ValueError(f"--min-et-mm3 {args.min_et_mm3:g} and --tune-min-et: give the volume or let cv "
                         "choose it, not both")
    # a bad --roi / --overlap / --sw-batch fails here, once, before any work (exit 2, segbench.cli)
    infer_cfg = InferConfig(
        roi=args.roi,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch,
        tta=args.tta,
        min_et_mm3=args.min_et_mm3,
        precision=args.infer_precision,
        # the training switches that speed up inference too (compile is left out: a new graph per
        # fold model for a handful of test volumes costs more than it saves)
        channels_last=args.channels_last,
        fused_norm=args.fused_norm,
        fast=args.fast,
    )
    values = config_values(args)
    # what this command gives; a fold trained before keeps the rest of its own settings (epochs, lr,
    # model options, ...), as `segbench train --resume` does
    given = set(values) - {"model_options"} | ({"model_options"} if args.model_options else set())
    if not args.model_options:
        del values["model_options"]
    try:
        doc = run_cv(TrainConfig(**values), args.folds, infer_cfg, args.tune_min_et, given)
    except (FileNotFoundError, ValueError) as err:
        print(f"segbench cv: {err}", file=sys.stderr)
        return 1
    from seg.cv import markdown_table

    print(markdown_table(doc))
    print(f"wrote {args.out}/cv.json and {args.out}/cv.md")
    errors = ([f"fold {f['fold']} failed: {f['error']}" for f in doc["failed"]] + doc["test"]["errors"]
              + doc.get("postprocess", {}).get("errors", []))
    for error in errors:
        print(f"segbench cv: {error}", file=sys.stderr)
    return 1 if errors else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from seg.commands.train import MODELS, TRAIN_OPTIONS, add_config_option, add_model_option

    p = subparsers.add_parser(
        "cv",
        help="k-fold cross-validation: train K folds, score each and their ensemble on the test split",
        description="Train one model per fold of DATA/splits.json under OUT/fold<k> (a rerun resumes and "
        "skips finished folds), then predict the test split with each fold's best.pt and with their "
        "ensemble (mean probabilities); region Dice / HD95 in prepared space go to OUT/cv.json and "
        "OUT/cv.md.",
    )
    p.add_argument("--data", dest="data_dir", required=True, help="prepared folder (with splits.json)")
    p.add_argument("--model", choices=MODELS, help="model name (default unet; a rerun: the folds' own)")
    p.add_argument("--out", required=True, help="run folder: fold<k>/, cv.json, cv.md")
    p.add_argument("--folds", type=int, help="how many folds to train: folds 0..N-1 of splits.json "
                   "(a count, not a fold index; default: all of them, or a rerun's own count from "
                   "its cv.json)")
    add_model_option(p, "channels=(8,16,32) with strides=(2,2)")
    train = p.add_argument_group("training (as segbench train; defaults from TrainConfig)")
    for flag, name, kwargs in TRAIN_OPTIONS:
        if name in ("fold", "resume"):  # cv sets fold and resume per fold itself
            continue
        if name == "device":
            kwargs = dict(kwargs, help="auto (cuda if present), cpu, cuda or cuda:N; also for the test "
                          "predictions")
        add_config_option(train, flag, name, with_default=False, **kwargs)
    test = p.add_argument_group("test-split prediction")
    test.add_argument("--roi", type=int, help="window edge (default: the training patch, else the prep size)")
    test.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    test.add_argument("--sw-batch", type=int, default=4, help="windows per forward pass (default 4)")
    test.add_argument("--tta", action="store_true", help="average over the 8 axis-flip combinations")
    test.add_argument("--min-et-mm3", type=float, default=0.0, metavar="MM3",
                      help="a predicted enhancing tumour smaller than this becomes necrotic core (0: off)")
    test.add_argument("--tune-min-et", action="store_true",
                      help="choose --min-et-mm3 on the folds' validation cases (out-of-fold predictions, the "
                           "best mean ET Dice of 0-1200 mm³) and score the test split with it")
    test.add_argument(
        "--infer-precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="autocast for the test predictions (auto: bf16 on CUDA, else fp32)",
    )
    p.set_defaults(func=run)
