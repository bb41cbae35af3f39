"""NVTX ranges in the `segbench` domain, around the phases of a training or inference step.

The `nvtx` package makes a range a near no-op when no profiler (Nsight Systems) is attached, so
the ranges stay in the hot path permanently. Without the package they are plain no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

try:
    import nvtx as _nvtx
except ImportError:  # a GPU box without the wheel still runs, just without ranges
    _nvtx = None

DOMAIN = "segbench"

# Phase names used across seg and bench, so traces from every workload line up.
PHASES = ("data_wait", "h2d", "forward", "loss", "backward", "optimizer", "inference")


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    if _nvtx is None:
        yield
        return
    with _nvtx.annotate(name, domain=DOMAIN):
        yield
