"""Where the Triton kernels can run, and small launch-planning helpers shared by the kernels.

Triton decides between compiled kernels and its CPU interpreter when a kernel is *defined*
(`TRITON_INTERPRET=1` in the environment at that moment), so the kernel modules are imported lazily,
on the first call that needs them: set the variable before the first kernel call, not merely before
`import kernels`.
"""

from __future__ import annotations

import functools
import os

import torch


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:  # the `triton` extra is optional (no wheels off Linux x86-64)
        return f"triton is not installed ({e})"
    return None


def available() -> tuple[bool, str]:
    """(True, what runs) when the Triton kernels can run here, else (False, why not)."""
    err = _triton_import_error()
    if err is not None:
        return False, err
    if interpret_mode():
        return True, "Triton interpreter (TRITON_INTERPRET=1)"
    if torch.cuda.is_available():
        return True, "Triton on CUDA"
    return False, "no CUDA device and TRITON_INTERPRET is not set, so the PyTorch reference runs instead"


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on `t` runs the Triton kernels (else the PyTorch reference, same results)."""
    ok, _ = available()
    if not ok:
        return False
    return interpret_mode() or t.is_cuda


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to fill; 1 under the interpreter, where fewer, larger programs run faster."""
    if device.type == "cuda" and not interpret_mode():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def prev_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
