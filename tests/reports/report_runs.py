"""Hand-written run folders (results.jsonl + env.json) for the report and compare tests."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def _step(
    variant: str, seconds: float, order: int, spread: float = 0.01, n: int = 12, seed: int = 0, **extra
):
    samples = list(seconds * (1 + spread * np.random.default_rng(seed).standard_normal(n)))
    p20, med, p80 = np.percentile(samples, [20, 50, 80])
    return {
        "suite": "hand",
        "workload": "train_step",
        "kind": "train_step",
        "variant": variant,
        "order": order,
        "status": "ok",
        "s_per_iter": {"median": med, "p20": p20, "p80": p80, "n": n},
        "step_times_s": samples,
        "samples_per_s": 1 / med,
        "peak_bytes": 2**30,
        "shape": [128, 128, 128],
        "first_step_s": 3 * seconds,
        "mfu": 0.02,
        "parity": {"reference": "fp32", "max_rel_dev": 0.0 if variant == "fp32" else 1e-3},
        **extra,
    }


def write_run(path: Path, scale: float = 1.0) -> Path:
    path.mkdir(parents=True)
    rows = [
        _step("seed", 0.169 * scale, 0, seed=1),
        _step("fp32", 0.145 * scale, 1, seed=2),
        _step(
            "bf16",
            0.138 * scale,
            2,
            seed=3,
            paired={"baseline": "seed",
                    "speedup": {"ratio": 1.22, "ci_low": 1.18, "ci_high": 1.26, "pairs": 6}},
        ),
        _step("bf16+compile", 0.074 * scale, 3, seed=4, anchor_s_per_iter=0.074),
        {
            "suite": "hand",
            "workload": "train_step",
            "kind": "train_step",
            "variant": "fused_norm",
            "order": 4,
            "status": "unavailable",
            "error": "the Triton kernels run on CUDA",
        },
        {
            "suite": "hand",
            "workload": "train_step",
            "kind": "train_step",
            "variant": "fail:x",
            "order": 5,
            "status": "error",
            "error": "RuntimeError: x",
        },
        {
            "suite": "hand",
            "workload": "train_e2e",
            "kind": "train_e2e",
            "variant": "bf16",
            "order": 6,
            "status": "ok",
            "s_per_iter": {"median": 0.2, "p20": 0.19, "p80": 0.21, "n": 3},
            "step_times_s": [0.19, 0.2, 0.21],
            "samples_per_s": 5.0,
            "data_wait_s": {"median": 0.1},
            "compute_s": {"median": 0.1},
            "wait_fraction": 0.5,
            "verdict": "input-bound",
        },
        {
            "suite": "hand",
            "workload": "dataloader",
            "kind": "dataloader",
            "variant": "workers:8",
            "order": 7,
            "status": "ok",
            "s_per_iter": {"median": 0.03, "p20": 0.02, "p80": 0.04, "n": 3},
            "step_times_s": [0.02, 0.03, 0.04],
            "samples_per_s": 33.0,
            "mb_per_s": 1650.0,
            "workers": 8,
            "sample_shape": [4, 128, 128, 128],
        },
        {
            "suite": "hand",
            "workload": "norm",
            "kind": "norm_kernel",
            "variant": "bf16",
            "order": 8,
            "status": "ok",
            "s_per_iter": {"median": 0.0088, "p20": 0.0087, "p80": 0.0089, "n": 3},
            "step_times_s": [0.0087, 0.0088, 0.0089],
            "forward_s": {"median": 0.00405},
            "backward_s": {"median": 0.00471},
            "forward_gb_per_s": 132.0,
            "backward_gb_per_s": 171.0,
            "copy_gb_per_s": 3000.0,
            "fraction_of_copy": 0.05,
            "parity": {"reference": "fp32 eager", "max_abs_err": 0.004},
        },
    ]
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "env.json").write_text(
        json.dumps(
            {
                "suite": "hand",
                "requested_device": "cuda",
                "command": "segbench bench --suite hand",
                "cpu_count": 16,
                "versions": {"torch": "2.11.0"},
                "git": {"sha": "abc", "dirty": False},
                "calibration": {
                    "gpu": "NVIDIA H100 80GB HBM3",
                    "matmul_flops_per_s": 7.7e14,
                    "matmul_dtype": "bfloat16",
                    "copy_bytes_per_s": 3e12,
                },
            }
        )
    )
    return path


def run_segbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segbench", *args], capture_output=True, text=True, timeout=120
    )
