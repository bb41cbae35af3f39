"""Kernel tests run the Triton kernels: compiled on a CUDA device, else in Triton's CPU interpreter.

Triton fixes interpreter-vs-compiler when it is imported, so on a CPU-only machine this conftest
imports triton once with TRITON_INTERPRET=1 (unless something imported it before) and restores the
environment at once; each kernel test then sets TRITON_INTERPRET=1 only while it runs. Other areas'
tests, and subprocesses they start, keep seeing the real environment (no interpreter, kernels
`unavailable` on CPU).

bf16 in the interpreter: Triton 3.9's interpreter truncates float32 -> bf16 (round toward zero; a
GPU rounds to nearest even), so bf16 errors measured here run up to about twice a GPU's: the bf16
tolerances hold with room on a GPU. Triton < 3.7's interpreter fails under numpy >= 2.4 (CI's triton
is newer; the GPU does not interpret).
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


def _round_to_tf32(x):
    """float32 array rounded to TF32's 10 mantissa bits (to nearest, ties away), as tensor cores read it."""
    import numpy as np

    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.fixture(autouse=True)
def tf32_like_the_gpu(monkeypatch):
    """The interpreter multiplies a float32 tl.dot exactly, where a compiled kernel on sm_80+ rounds
    its inputs to TF32 unless told `input_precision="ieee"`; this makes the interpreter do the same, so
    a float32 parity test here fails as it would on the GPU. On CUDA: PyTorch's own TF32 switches off
    (cuDNN's is on by default), so the references are fp32 too."""
    if CUDA:
        # by hand for cuBLAS: monkeypatch would undo its computed attribute with a delattr, which fails
        matmul = torch.backends.cuda.matmul
        before = matmul.fp32_precision if hasattr(matmul, "fp32_precision") else matmul.allow_tf32
        matmul.allow_tf32 = False
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        yield
        # the legacy switch unless the state was the new API's untouched "none": restoring "tf32"
        # through the new API would make every later read of allow_tf32 raise (mixed APIs)
        if before == "none":
            matmul.fp32_precision = before
        else:
            matmul.allow_tf32 = before in ("tf32", True)
        return
    try:
        from triton.runtime import interpreter
    except ImportError:
        yield
        return
    import triton.language as tl

    plain = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.float32 and "IEEE" not in str(input_precision).upper():
            a = interpreter.TensorHandle(_round_to_tf32(a.data), a.dtype.scalar)
            b = interpreter.TensorHandle(_round_to_tf32(b.data), b.dtype.scalar)
        return plain(self, a, b, d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
    yield


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
