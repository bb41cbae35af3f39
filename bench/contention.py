"""How much of the host's CPU time went to other processes while a case ran.

A CPU timing (and a GPU timing fed by CPU work: the input pipeline, kernel launches) is only as
good as the machine was quiet. Around each case the runner reads the host's busy CPU time
(/proc/stat) and the CPU time of its own finished children (getrusage: the case process and the
loader workers it waited for); the difference is what other processes used:

    other_cpu_fraction = (host busy s - own children s) / (wall s * logical CPUs)

0 on a quiet machine; 0.5 on a 2-core machine means one core's worth of somebody else's work. The
report and the runner flag cases above reports.rows.BUSY_FRACTION. Linux only (None elsewhere).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

_STAT = Path("/proc/stat")
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _host_busy_s() -> float | None:
    """CPU-seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        fields = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) * _TICK_S


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class HostLoad:
    """Context manager around one case: `other_cpu_fraction` after it exits (None off Linux)."""

    def __enter__(self) -> HostLoad:
        self.other_cpu_fraction: float | None = None
        self._busy, self._own, self._wall = _host_busy_s(), _children_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = _host_busy_s(), _children_cpu_s(), time.perf_counter()
        if busy is None or self._busy is None or wall <= self._wall:
            return
        other_s = (busy - self._busy) - (own - self._own)
        fraction = other_s / ((wall - self._wall) * (os.cpu_count() or 1))
        self.other_cpu_fraction = round(min(max(fraction, 0.0), 1.0), 3)
