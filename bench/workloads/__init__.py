"""Workloads: each module has `run(case) -> dict` (the measured row fields) and
`make_step(case) -> (step, device)` (one ready-to-call unit of work, for the profiler)."""

from __future__ import annotations

import importlib
from types import ModuleType

KINDS = ("train_step", "train_e2e", "dataloader", "infer", "norm_kernel", "footprint")


def module(kind: str) -> ModuleType:
    if kind not in KINDS:
        raise ValueError(f"unknown workload kind {kind!r}; choose from {', '.join(KINDS)}")
    return importlib.import_module(f"bench.workloads.{kind}")
