"""bench.contention: other processes' CPU time around a case is measured, the case's own is not."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.contention import HostLoad

BURN = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < {s}: pass\n"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat (Linux)")


def test_own_waited_children_are_not_counted_but_a_stranger_is():
    # the case: a child we wait for, busy for 1 s -> its CPU time is ours, not "other"
    with HostLoad() as own:
        subprocess.run([sys.executable, "-c", BURN.format(s=1.0)], check=True)
    # a stranger: a process still running (not reaped) while we sleep -> other processes' time
    stranger = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.5)])
    time.sleep(0.2)
    with HostLoad() as busy:
        time.sleep(1.0)
    stranger.wait()
    assert own.other_cpu_fraction is not None and busy.other_cpu_fraction is not None
    assert busy.other_cpu_fraction > own.other_cpu_fraction
    assert busy.other_cpu_fraction >= 0.5 / (os.cpu_count() or 1)  # ~one busy core


def test_host_busy_time_leaves_out_idle_and_iowait(tmp_path, monkeypatch):
    from bench import contention

    stat = tmp_path / "stat"  # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 2 30 5000 700 4 5 6 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    monkeypatch.setattr(contention, "_STAT", stat)
    assert contention._host_busy_s() == pytest.approx((100 + 2 + 30 + 4 + 5 + 6) * contention._TICK_S)
