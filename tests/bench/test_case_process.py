"""A case's process: it runs in a session of its own, so it must end with its runner however the runner
ends (Ctrl-C, SIGTERM, a closed terminal's SIGHUP, SIGKILL) but not on a hangup under nohup, and a
case killed by a signal is named with faulthandler's report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_an_interrupted_runner_takes_its_case_process_down(tmp_path, monkeypatch):
    """Case processes run in their own session (so a timeout can kill their loader workers too):
    Ctrl-C reaches only the runner, which must then end the case, not leave it running."""
    import subprocess as sp

    from bench import runner

    started = []
    real_wait = sp.Popen.wait

    def interrupted_wait(self, timeout=None):
        if timeout is not None and not started:  # the runner's first wait: as if Ctrl-C arrived
            started.append(self)
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(sp.Popen, "wait", interrupted_wait)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "calibrate", "device": "cpu"}))
    with pytest.raises(KeyboardInterrupt):
        runner._wait_case(spec, tmp_path / "result.json", tmp_path / "case.log", {}, 60)
    assert started and started[0].poll() is not None  # killed and reaped


def _hanging_bench(tmp_path, nohup: bool = False):
    """`segbench bench` of one case that hangs; (the bench process, the case's pid once it started).
    `nohup`: started with SIGHUP ignored, as nohup starts it; otherwise with its default disposition,
    whatever pytest's own is (a CI job under nohup: the child would inherit the ignore). Set here
    around the fork: inherited."""
    import signal
    import time

    suite = tmp_path / "hang.toml"
    suite.write_text('name = "hang"\ndevice = "cpu"\n[[workload]]\nkind = "norm_kernel"\nname = "hang"\n'
                     'shape = [1, 2, 4, 4, 4]\nvariants = ["fail:hang"]\ntimeout_s = 300\n')
    run = tmp_path / "run"
    command = [sys.executable, "-m", "segbench", "bench", "--suite", str(suite), "--out", str(run)]
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)
    try:
        bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        signal.signal(signal.SIGHUP, before)
    spec = run / "cases" / "000-hang-fail_hang.spec.json"
    deadline = time.monotonic() + 120
    case_pid = None
    while case_pid is None and time.monotonic() < deadline:  # the hanging case has started
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(spec) in (proc / "cmdline").read_text().replace("\0", " "):
                    case_pid = int(proc.name)
            except OSError:
                continue
        time.sleep(0.2)
    if case_pid is None:  # nothing left running whatever the verdict (SIGTERM ends its case too)
        bench.send_signal(signal.SIGTERM)
        try:
            bench.wait(timeout=60)
        except subprocess.TimeoutExpired:
            bench.kill()
    assert case_pid is not None, "the case process never started"
    return bench, case_pid


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    """Whether `pid` ended within `wait_s` (or is a zombie its new parent has not reaped: a container's
    init may never); one still running is killed, whatever the verdict."""
    import os
    import signal
    import time

    def gone() -> bool:
        try:
            return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
        except OSError:
            return True

    deadline = time.monotonic() + wait_s
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    ended = gone()
    if not ended:
        os.kill(pid, signal.SIGKILL)
    return ended


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGKILL"])
def test_a_signal_ending_segbench_bench_ends_the_running_case_too(tmp_path, sig):
    """`timeout` (or a lease's end) sends SIGTERM, a closed terminal SIGHUP, a lease's hard end SIGKILL;
    the case runs in its own session and must not outlive the bench process (on a GPU it would hold
    the device while the caller packs up)."""
    import signal

    bench, case_pid = _hanging_bench(tmp_path)
    bench.send_signal(getattr(signal, sig))
    assert bench.wait(timeout=60) != 0
    assert _gone(case_pid), "the case process outlived the bench process"


def test_under_nohup_a_hangup_leaves_segbench_bench_running(tmp_path):
    import signal
    import time

    bench, case_pid = _hanging_bench(tmp_path, nohup=True)
    bench.send_signal(signal.SIGHUP)
    time.sleep(2)
    try:
        assert bench.poll() is None, "a hangup ended a bench started under nohup"
    finally:
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
    assert _gone(case_pid)


def test_a_case_killed_by_a_signal_names_it_with_faulthandler_s_report(tmp_path, monkeypatch):
    import os
    import sys

    from bench import runner

    crash = tmp_path / "python"  # stands in for the interpreter: a case that segfaults in native code
    crash.write_text(f'#!/bin/sh\nexec {sys.executable} "$1" "$2" -c "import ctypes; ctypes.string_at(0)"\n')
    os.chmod(crash, 0o755)
    monkeypatch.setattr(runner.sys, "executable", str(crash))
    fields = runner.run_case_process({"kind": "calibrate"}, tmp_path / "cases", "c", 60)
    assert fields["status"] == "error"
    assert fields["error"].startswith("case process died (killed by signal 11): Fatal Python error: "
                                      "Segmentation fault")
