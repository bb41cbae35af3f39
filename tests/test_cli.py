"""The `segbench` root: every subcommand registered, and starting it imports no heavy package."""

from __future__ import annotations

import subprocess
import sys

from segbench.cli import build_parser

COMMANDS = {"data", "train", "cv", "infer", "eval", "view", "bench", "profile", "report", "demo"}


def test_every_contract_command_is_registered():
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    assert COMMANDS <= set(subparsers.choices)


def test_building_the_parser_imports_neither_torch_nor_monai():
    code = (
        "import sys; from segbench.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'monai', 'triton', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
