"""A training run killed mid-run (SIGKILL) and resumed with --resume ends with the same weights as an
uninterrupted run: checkpoints are atomic and the data order/augmentation replay from the epoch."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from test_loaders import write_prepared

from seg.train.checkpoint import load_checkpoint

EPOCHS = 4


def _command(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "segbench", "train", "--data", str(data_dir), "--out", str(out),
        "--model", "unet", "--model-option", "channels=(8,16,32)", "--model-option", "strides=(2,2)",
        "--epochs", str(EPOCHS), "--batch-size", "1", "--lr", "1e-2", "--precision", "fp32",
        "--device", "cpu", "--seed", "4", *extra,
    ]


def _losses(run: Path) -> list[tuple[str, str, str]]:
    with (run / "log.csv").open() as f:
        return [(r["epoch"], r["train_loss"], r["val_dice"]) for r in csv.DictReader(f)]


def _start(command: list[str], err: Path) -> subprocess.Popen:
    # stderr (progress bars) to a file: a full pipe would block the run.
    with err.open("w") as f:
        return subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                stdout=subprocess.DEVNULL, stderr=f)


def _finish(process: subprocess.Popen, err: Path) -> None:
    assert process.wait(timeout=300) == 0, err.read_text()[-2000:]


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    data_dir = write_prepared(tmp_path / "data", n=6, size=16)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _start(_command(data_dir, whole), tmp_path / "whole.err")  # alongside, 1 thread each
    process = _start(_command(data_dir, killed), tmp_path / "killed.err")
    deadline = time.monotonic() + 300
    while not (killed / "last.pt").exists():  # the first epoch's checkpoint
        assert process.poll() is None, (tmp_path / "killed.err").read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    interrupted_at = load_checkpoint(killed / "last.pt")["epoch"]
    assert 1 <= interrupted_at < EPOCHS, "the kill must land before the run finished"

    resumed_err = tmp_path / "resumed.err"
    _finish(_start(_command(data_dir, killed, "--resume"), resumed_err), resumed_err)
    _finish(uninterrupted, tmp_path / "whole.err")
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    assert a["scheduler"] == b["scheduler"] and a["best_dice"] == b["best_dice"]
    assert _losses(whole) == _losses(killed)  # one row per epoch, no duplicates from the replay


def test_resuming_in_another_memory_layout_keeps_the_adamw_steps_exact():
    """A run resumed with --channels-last switched: the saved moments are contiguous, the parameters
    channels-last; fused AdamW pairs elements by memory position, so the layouts must be matched."""
    import copy

    import torch.nn as nn

    from seg.recipe import build_optimizer
    from seg.train.checkpoint import match_optimizer_layout

    torch.manual_seed(0)
    conv = nn.Conv3d(3, 4, 3)
    x = torch.randn(2, 3, 6, 6, 6)

    def step(model, optimizer):
        optimizer.zero_grad()
        model(x.contiguous(memory_format=torch.channels_last_3d)).square().mean().backward()
        optimizer.step()

    ref = copy.deepcopy(conv)
    opt_ref = build_optimizer(ref, lr=1e-2)
    step(ref, opt_ref)
    saved_model, saved_opt = copy.deepcopy(ref.state_dict()), copy.deepcopy(opt_ref.state_dict())
    step(ref, opt_ref)  # the uninterrupted second step

    resumed = copy.deepcopy(conv).to(memory_format=torch.channels_last_3d)
    resumed.load_state_dict(saved_model)
    optimizer = build_optimizer(resumed, lr=1e-2)
    optimizer.load_state_dict(saved_opt)
    match_optimizer_layout(optimizer)
    assert optimizer.state[resumed.weight]["exp_avg"].is_contiguous(memory_format=torch.channels_last_3d)
    step(resumed, optimizer)
    torch.testing.assert_close(resumed.weight, ref.weight, rtol=1e-5, atol=1e-6)


def test_a_resume_with_other_steps_per_epoch_or_lr_follows_its_own_schedule(tmp_path):
    """Resumed with --accum 2 (half the optimizer steps per epoch) and another --lr: the restored
    step counter had counted the first run's steps, and the lr 0 for every epoch left was the result."""
    from seg.recipe import build_scheduler

    data_dir = write_prepared(tmp_path / "data", n=6, size=16)  # 4 training cases, batch 1
    run = tmp_path / "run"
    first = [*_command(data_dir, run)]
    first[first.index("--epochs") + 1] = "2"
    _finish(_start(first, tmp_path / "a.err"), tmp_path / "a.err")
    again = _command(data_dir, run, "--resume", "--accum", "2", "--lr", "5e-3", "--weight-decay", "0.02")
    resumed = subprocess.run(again, timeout=300,
                             capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "this run makes 2: the schedule goes on from epoch 2" in resumed.stdout
    assert "lr 0.01 -> 0.005" in resumed.stdout
    state = load_checkpoint(run / "last.pt")
    assert state["steps_per_epoch"] == 2 and state["scheduler"]["last_epoch"] == EPOCHS * 2
    # this run's schedule: 2 steps per epoch, 1 warm-up epoch, 4 epochs; the log's lr is the next step's
    expected = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=5e-3)
    schedule = build_scheduler(expected, warmup_steps=2, total_steps=EPOCHS * 2)
    want = {}
    for step in range(1, EPOCHS * 2 + 1):
        expected.step()
        schedule.step()
        if step % 2 == 0:
            want[step // 2] = schedule.get_last_lr()[0]
    with (run / "log.csv").open() as f:
        got = {int(r["epoch"]): float(r["lr"]) for r in csv.DictReader(f)}
    assert got[3] > 0 and abs(got[3] - want[3]) < 1e-12 and abs(got[4] - want[4]) < 1e-12
    group = state["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 5e-3 and group["weight_decay"] == 0.02
    # the run finished: a rerun with other steps per epoch trains nothing, so no schedule note
    # (a cv rescoring rerun printed one per fold)
    done = subprocess.run(_command(data_dir, run, "--resume", "--accum", "1"), timeout=300,
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "optimizer steps per epoch" not in done.stdout + done.stderr


def test_a_resume_keeps_the_run_s_lr_weight_decay_and_epochs_unless_given_again(tmp_path):
    import json

    data_dir = write_prepared(tmp_path / "data", n=6, size=16)
    run = tmp_path / "run"
    first = _command(data_dir, run, "--weight-decay", "0.02")
    first[first.index("--epochs") + 1] = "2"
    _finish(_start(first, tmp_path / "a.err"), tmp_path / "a.err")
    # --lr and --weight-decay not given again: the run's (1e-2, 0.02), not the defaults (1e-4, 1e-5)
    longer = _command(data_dir, run, "--resume")
    del longer[longer.index("--lr"):longer.index("--lr") + 2]
    longer[longer.index("--epochs") + 1] = "3"
    _finish(_start(longer, tmp_path / "b.err"), tmp_path / "b.err")
    state = load_checkpoint(run / "last.pt")
    group = state["optimizer"]["param_groups"][0]
    assert state["epoch"] == 3 and (group["initial_lr"], group["weight_decay"]) == (1e-2, 0.02)
    # --epochs not given again either: the run's 3
    again = _command(data_dir, run, "--resume")
    del again[again.index("--epochs"):again.index("--epochs") + 2]
    _finish(_start(again, tmp_path / "c.err"), tmp_path / "c.err")
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 3
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    # a resume refused (another fold's cases) leaves config.json, where the next resume's settings
    # come from, as it was
    stored = (run / "config.json").read_text()
    refused = _command(data_dir, run, "--resume", "--fold", "0")
    refused[refused.index("--lr") + 1] = "7"
    proc = subprocess.run(refused, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "trained on the main split, not fold 0" in proc.stderr
    assert (run / "config.json").read_text() == stored
