"""The kernels compile on this GPU-less machine for an H100 (sm_90) and the cards below it (sm_89, sm_86,
sm_80), with 128-bit loads, no spills and shared memory within each card's limit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_kernels_compile_for_h100_and_consumer_cards_with_vector_loads():
    pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend is not installed")
    # A fresh process: this session's triton runs in interpreter mode, which cannot compile.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-m", "kernels.codegen_check"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sections = proc.stdout.split("== sm_")[1:]
    assert [section[:2] for section in sections] == ["90", "89", "86", "80"]
    for section in sections:  # each architecture: every streaming and LayerNorm kernel vectorized
        assert section.count("widest load 128 bit") == 10, section


def test_under_the_interpreter_it_says_how_to_run_it_in_one_line():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "kernels.codegen_check", "--arch", "89"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "python -m kernels.codegen_check: run without TRITON_INTERPRET: the interpreter's kernels cannot be "
        "compiled"]
