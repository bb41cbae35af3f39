"""`segbench train`: the CLI over `seg.train.train`. Standard library only at import time."""

from __future__ import annotations

import argparse
import ast
import dataclasses

MODELS = ("unet", "swinunetr", "dynunet")


def _option(text: str) -> tuple[str, object]:
    """`key=value` -> (key, value); value as a Python literal when it parses (8, 1e-3, (8,16),
    True), else the plain string (preset=paper)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--model-option expects key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def register(subparsers) -> None:
    from seg.train.config import LOADERS, TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}

    def helptext(name: str) -> str:
        default = fields[name].default
        suffix = "" if default is dataclasses.MISSING else f" (default: {default})"
        return fields[name].metadata["help"] + suffix

    parser = subparsers.add_parser(
        "train",
        help="train a segmentation model on a prepared folder (DDP under torchrun)",
        description="Train with the seed's recipe (DiceCE, fused AdamW, warm-up + cosine, AMP). "
        "Writes OUT/last.pt, OUT/best.pt, OUT/log.csv, OUT/curves.png (loss and Dice). "
        "Under `torchrun --nproc_per_node K segbench train ...` it trains with DDP; "
        "--batch-size is per process.",
    )
    def add(flag: str, name: str, **kwargs) -> None:
        default = fields[name].default
        kwargs.setdefault("default", None if default is dataclasses.MISSING else default)
        parser.add_argument(flag, dest=name, help=helptext(name), **kwargs)

    add("--data", "data_dir", required=True)
    add("--out", "out", required=True)
    add("--model", "model", choices=MODELS)
    parser.add_argument(
        "--model-option", dest="model_options", action="append", type=_option, default=[],
        metavar="KEY=VALUE",
        help="seg.models.build override, repeatable (e.g. preset=paper, channels=(8,16,32))",
    )
    add("--epochs", "epochs", type=int)
    add("--batch-size", "batch_size", type=int)
    add("--accum", "accum", type=int)
    add("--lr", "lr", type=float)
    add("--weight-decay", "weight_decay", type=float)
    add("--warmup-epochs", "warmup_epochs", type=float)
    add("--precision", "precision", choices=("fp32", "bf16", "fp16"))
    add("--workers", "workers", type=int)
    add("--loader", "loader", choices=LOADERS)
    add("--seed", "seed", type=int)
    add("--patch", "patch", type=int)
    add("--fold", "fold", type=int)
    add("--device", "device")
    add("--resume", "resume", action="store_true")
    add("--max-steps-per-epoch", "max_steps_per_epoch", type=int)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from seg.train import TrainConfig, train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values["model_options"] = dict(args.model_options)
    try:
        cfg = TrainConfig(**values)
    except ValueError as err:
        raise SystemExit(f"segbench train: {err}") from err
    summary = train(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0
