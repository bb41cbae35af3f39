"""Root of the `segbench` console script.

Each subcommand lives beside the code it drives, in a module with a `register(subparsers)`
function that adds its parser and sets `func`. Those modules import only the standard library
at top level (heavy imports happen inside `func`), so `segbench --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that register subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "seg.commands.data",
    "seg.commands.pack",
    "seg.commands.train",
    "seg.commands.cv",
    "seg.commands.infer",
    "seg.commands.ensemble",
    "seg.commands.evaluate",
    "seg.commands.view",
    "bench.commands",
    "reports.commands",
    "segbench.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segbench",
        description="Benchmark harness and segmentation system for 3D brain-tumour segmentation (BraTS).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line (work already written is complete: files are renamed
        # into place only when whole), and how to go on where there is a way
        if os.environ.get("SEGBENCH_TRACEBACK"):  # where was it? (a hang)
            raise
        print(f"segbench {_name(args)}: interrupted{_RESUME_HINTS.get(_name(args), '')}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `segbench eval ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # the file system said no (--out is a file, no permission, disk full):
        print(f"segbench {_name(args)}: {err}", file=sys.stderr)  # errno text names the path
        return 1
    except ValueError as err:  # a value the command cannot take (--seed -5, --size 7, --fractions 0.5,0.5)
        if os.environ.get("SEGBENCH_TRACEBACK"):  # for debugging segbench itself
            raise
        print(f"segbench {_name(args)}: {err}", file=sys.stderr)
        return 2


_RESUME_HINTS = {
    "train": "; the same command with --resume continues from the last finished epoch",
    "cv": "; the same command again continues (finished folds are kept)",
    "bench": "; the same command with --resume runs only the cases not yet done",
    "data prep": "; the same command again skips the cases already prepared",
}


def _name(args: argparse.Namespace) -> str:
    return " ".join(filter(None, (args.command, getattr(args, "data_command", None))))


if __name__ == "__main__":
    sys.exit(main())
