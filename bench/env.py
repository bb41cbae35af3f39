"""env.json: what a run's numbers depend on.

`capture_host` runs in the parent without importing torch (versions from package metadata), so
the parent never creates a CUDA context beside its cases. `calibrate` runs in a case process:
the device's name, driver, CUDA/cuDNN, and its measured matmul rate and copy bandwidth.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def capture_host(argv: list[str] | None = None) -> dict:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(argv if argv is not None else sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": {
            name: _version(name)
            for name in ("torch", "triton", "monai", "einops", "numpy", "nibabel", "pandas", "segbench")
        },
        "git": {"sha": _git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None},
        "nsys": shutil.which("nsys"),
    }


def _driver_version() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def device_facts(device: str) -> dict:
    """torch build and device: the GPU's name, memory, driver, CUDA/cuDNN; on the CPU, threads and
    whether bf16 training needs the oneDNN workaround. Raises Unavailable without a CUDA device."""
    import torch

    info: dict = {
        "device": device,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        if not torch.cuda.is_available():
            from bench.variants import Unavailable

            raise Unavailable("PyTorch sees no CUDA device")
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            gpu_sm_count=props.multi_processor_count,
            gpu_capability=f"{props.major}.{props.minor}",
            driver=_driver_version(),
        )
        from profiles.attention_kernels import sdpa_priority_order

        try:  # which attention kernel a call tries first: private API, a fact for the report only
            info["sdpa_order"] = sdpa_priority_order("cuda")
        except Exception as err:  # never let a report fact stop the run
            info["sdpa_order_error"] = f"{type(err).__name__}: {err}"[:200]
    else:  # bf16 rows on this CPU train with oneDNN off when it has the bug (see seg.cpu_bf16)
        from seg import cpu_bf16

        info["cpu_bf16_conv3d_weight_grad_ok"] = cpu_bf16.conv3d_weight_grad_ok()
    return info


def calibrate(device: str) -> dict:
    """Device facts and ceilings, measured once per run: the MFU and GB/s denominators."""
    from bench.measure import copy_rate, matmul_rate

    info = device_facts(device)
    info.update(matmul_rate(device))
    info["copy_bytes_per_s"] = copy_rate(device)
    info["mfu_basis"] = (
        "bf16 dense matmul rate measured on this GPU"
        if device == "cuda"
        else "fp32 dense matmul rate measured on this CPU (no bf16 tensor cores)"
    )
    return info


