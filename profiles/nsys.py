"""Nsight Systems: the command that captures a case's active steps.

The case process brackets the chosen steps with cudaProfilerStart/Stop (torch.cuda.profiler), so
`--capture-range=cudaProfilerApi` records only them, with the segbench NVTX ranges (forward,
loss, backward, optimizer, data_wait, h2d) and the CUDA, cuDNN and cuBLAS calls.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

TRACE = "cuda,nvtx,cudnn,cublas"


def nsys_command(child: list[str], report: Path) -> list[str]:
    """`nsys profile ...` wrapping the `child` command line; the report goes to `report`.nsys-rep."""
    return [
        "nsys",
        "profile",
        "--capture-range=cudaProfilerApi",
        "--capture-range-end=stop",
        f"--trace={TRACE}",
        "--force-overwrite=true",
        "-o",
        str(report),
        *child,
    ]


def nsys_available() -> str | None:
    return shutil.which("nsys")


def render(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
