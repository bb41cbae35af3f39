"""`segbench train`: the CLI over `seg.train.train`. Standard library only at import time."""

from __future__ import annotations

import argparse
import ast
import dataclasses

from seg.models import MODEL_NAMES as MODELS  # standard library only (the networks: when built)
from seg.speed import COMPILE_MODES  # standard library only
from seg.train.config import KEPT_ON_RESUME, LOADERS  # standard library only


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


WORDS = {"true": True, "false": False, "none": None, "null": None}  # as JSON, TOML and YAML write them


def _option(text: str) -> tuple[str, object]:
    """`key=value` -> (key, value); value as a Python literal when it parses (8, 1e-3, (8,16),
    True; true/false/none in any case too), else the plain string (preset=paper)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--model-option expects key=value, got {text!r}")
    if value.strip().lower() in WORDS:  # "false" as a string is truthy: DynUNet would turn it on
        return key, WORDS[value.strip().lower()]
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


# (flag, TrainConfig field, argparse keywords): the training options `train` and `cv` share.
TRAIN_OPTIONS: tuple[tuple[str, str, dict], ...] = (
    ("--target", "target", {"metavar": "labels|regions"}),
    ("--epochs", "epochs", {"type": int}),
    ("--batch-size", "batch_size", {"type": int}),
    ("--accum", "accum", {"type": int}),
    ("--lr", "lr", {"type": float}),
    ("--weight-decay", "weight_decay", {"type": float}),
    ("--warmup-epochs", "warmup_epochs", {"type": float}),
    ("--precision", "precision", {"choices": ("fp32", "bf16", "fp16")}),
    ("--workers", "workers", {"type": int}),
    ("--loader", "loader", {"choices": LOADERS}),
    ("--seed", "seed", {"type": int}),
    ("--patch", "patch", {"type": int}),
    ("--fg-fraction", "fg_fraction", {"type": float}),
    ("--fold", "fold", {"type": int}),
    ("--device", "device", {}),
    ("--resume", "resume", {"action": "store_true"}),
    ("--max-steps-per-epoch", "max_steps_per_epoch", {"type": int}),
    # Speed switches: what `segbench bench` measures as compile[:MODE], channels_last, fused_norm,
    # swin_fast and ckpt/no_ckpt; results stay the same.
    ("--compile", "compile_mode", {"nargs": "?", "const": "default", "choices": COMPILE_MODES,
                                   "metavar": "MODE"}),
    ("--inductor", "inductor", {"action": "append", "default": [], "metavar": "NAME=VALUE"}),
    ("--channels-last", "channels_last", {"action": "store_true"}),
    ("--fused-norm", "fused_norm", {"action": "store_true"}),
    ("--fast", "fast", {"action": "store_true"}),
    ("--checkpointing", "checkpointing", {"action": argparse.BooleanOptionalAction}),
    ("--checkpoint-modules", "checkpoint_modules", {"type": _names, "metavar": "NAME[,NAME...]"}),
)


def add_config_option(parser, flag: str, name: str, with_default: bool = True, **kwargs) -> None:
    """`flag` for TrainConfig field `name`, its help text (and default) taken from the field;
    `with_default=False` leaves it None when absent (TrainConfig's default then applies)."""
    from seg.train.config import TrainConfig

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    default = None if field.default is dataclasses.MISSING else field.default
    suffix = "" if field.default is dataclasses.MISSING else f" (default: {field.default})"
    kwargs.setdefault("default", default if with_default else None)
    kwargs.setdefault("help", field.metadata["help"] + suffix)
    parser.add_argument(flag, dest=name, **kwargs)


def add_model_option(parser, example: str) -> None:
    parser.add_argument(
        "--model-option", dest="model_options", action="append", type=_option, default=[],
        metavar="KEY=VALUE", help=f"seg.models.build override, repeatable (e.g. {example})",
    )


def config_values(args: argparse.Namespace) -> dict:
    """TrainConfig keyword arguments from parsed `args`: every field the parser set (not None)."""
    from seg.train.config import TrainConfig

    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    values["model_options"] = dict(args.model_options)
    return values


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation model on a prepared folder (DDP under torchrun)",
        description="Train with the seed's recipe (DiceCE, fused AdamW, warm-up + cosine, AMP). "
        "Writes OUT/last.pt, OUT/best.pt, OUT/log.csv, OUT/curves.png (loss and Dice). "
        "Under torchrun it trains with DDP: `torchrun --nproc_per_node K --no-python segbench train ...` "
        "(or `$(which segbench)` for `segbench`: torchrun runs a bare name as a script in the current "
        "folder); --batch-size is per process.",
    )
    add_config_option(parser, "--data", "data_dir", required=True)
    add_config_option(parser, "--out", "out", required=True)
    add_config_option(parser, "--model", "model", choices=MODELS, with_default=False)
    add_model_option(parser, "preset=paper; channels=(8,16,32) with strides=(2,2)")
    for flag, name, kwargs in TRAIN_OPTIONS:
        # the schedule's settings stay None when not given: a resume then keeps the run's own
        add_config_option(parser, flag, name, with_default=name not in KEPT_ON_RESUME, **kwargs)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from seg.train import TrainConfig, train
    from seg.train.config import run_settings

    values = config_values(args)
    if args.resume:  # the run's model and schedule settings, where this command does not give them again
        if not values["model_options"]:
            del values["model_options"]
        values = {**run_settings(args.out), **values}
    try:
        cfg = TrainConfig(**values)
    except ValueError as err:
        raise SystemExit(f"segbench train: {err}") from err
    try:
        summary = train(cfg)
    # user errors, each naming its file or option: a missing or bad splits.json / prepared case,
    # last.pt without --resume, a checkpoint of another model, a bad --model-option, --fused-norm
    # without a usable Triton. One line, not a traceback.
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # SpeedOptionError is a ValueError
        raise SystemExit(f"segbench train: {err}") from err
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0
