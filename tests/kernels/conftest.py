"""Kernel tests run the Triton kernels: compiled on a CUDA device, else in Triton's CPU interpreter.

Triton fixes interpreter-vs-compiler when it is imported, so on a CPU-only machine this conftest
imports triton once with TRITON_INTERPRET=1 (unless something imported it before) and restores the
environment at once; each kernel test then sets TRITON_INTERPRET=1 only while it runs. Other areas'
tests, and subprocesses they start, keep seeing the real environment (no interpreter, kernels
`unavailable` on CPU).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()

if not CUDA and "triton" not in sys.modules:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:
        pass  # no triton: the tests that need it fail on kernels.available()
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if CUDA else "cpu")


@pytest.fixture
def triton_backend(device):
    """Fails (not skips) when the kernels cannot run: a silent fallback would make every test vacuous."""
    import kernels

    ok, why = kernels.available()
    assert ok, f"Triton kernels cannot run here: {why}"
    return device


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the kernels allocate starts as NaN, so an element a kernel never writes shows up."""
    from kernels import runtime

    def empty(*shape, device, dtype):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    def empty_like(t, dtype=None):
        return torch.empty_like(t, dtype=dtype).fill_(float("nan"))

    monkeypatch.setattr(runtime, "empty", empty)
    monkeypatch.setattr(runtime, "empty_like", empty_like)
