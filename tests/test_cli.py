"""The `segbench` root: every subcommand registered, and starting it imports no heavy package."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segbench.cli import build_parser, main

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


def test_a_file_system_refusal_is_one_line_naming_the_path(tmp_path, capsys):
    from segbench.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["data", "synth", "--out", str(blocker), "--cases", "1", "--shape", "16,16,16"]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("segbench data synth: ")]  # besides tqdm's bar
    assert str(blocker) in line and "Traceback" not in err


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    # `segbench bench --list | head -1`: the reader leaves after one line
    proc = subprocess.run(
        f"{sys.executable} -m segbench bench --list | head -1", shell=True, capture_output=True, text=True
    )
    assert proc.stdout.startswith("suites:") and "Traceback" not in proc.stderr


def test_a_value_a_command_cannot_take_is_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--cases", "1", "--seed", "-5"]) == 2
    prep = ["data", "prep", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "p"), "--size", "7"]
    assert main(prep) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["segbench data synth: --seed -5 --cases 1: the seed is >= 0, the count >= 1",
                   "segbench data prep: size 7 is too small (need >= 8)"]
    assert not (tmp_path / "s").exists() and not (tmp_path / "p").exists()


def test_ctrl_c_is_one_line_saying_how_to_go_on(monkeypatch, capsys):
    import seg.commands.train as train_command

    def interrupted(args):
        raise KeyboardInterrupt

    parser = build_parser()
    monkeypatch.setattr("segbench.cli.build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        if action.get_default("func") is train_command.run:
            action.set_defaults(func=interrupted)
    try:
        code = main(["train", "--data", "x", "--model", "unet", "--out", "y"])
    except KeyboardInterrupt:  # (would stop the whole pytest run)
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert err.strip() == ("segbench train: interrupted; the same command with --resume continues from the "
                           "last finished epoch")


def test_the_demo_s_prepared_data_is_ready_to_train_on(tmp_path, capsys):
    import json

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--cases", "4", "--shape", "24,24,16", "--size", "16",
                 "--workers", "1", "--skip-bench"]) == 0
    splits = json.loads((out / "prepared" / "splits.json").read_text())  # `segbench train` reads it
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(
        p.stem for p in (out / "prepared").glob("*.pt"))
