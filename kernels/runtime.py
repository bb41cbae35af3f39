"""Where the Triton kernels can run, and small launch-planning helpers shared by the kernels.

Triton decides between compiled kernels and its CPU interpreter when a jit function is *defined*
(`TRITON_INTERPRET=1` in the environment at that moment), and triton.language defines its own (tl.sum
& co.) when triton is imported: set the variable before anything imports triton. `import kernels`
does not import triton; the kernel modules are imported on the first call that runs them.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

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


def _language_interpreted() -> bool:
    """Whether triton.language (tl.sum & co. are jit functions too) was imported in interpreter mode."""
    import triton.language as tl

    return type(tl.standard.sum).__name__ == "InterpretedFunction"


def available() -> tuple[bool, str]:
    """(True, what runs) when the Triton kernels can run here, else (False, why not)."""
    err = _triton_import_error()
    if err is not None:
        return False, err
    if interpret_mode():
        if not _language_interpreted():
            return False, ("TRITON_INTERPRET=1 was set after triton was imported; Triton fixes its mode at "
                           "import, so set it before anything imports triton")
        return True, "Triton interpreter (TRITON_INTERPRET=1)"
    if torch.cuda.is_available():
        return True, "Triton on CUDA"
    return False, "no CUDA device and TRITON_INTERPRET is not set"


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the kernels cannot serve a model (on `device`, when given), or None when they can.

    With a device, a CPU model counts as unavailable outside the interpreter: the ops would silently
    run their PyTorch reference on its tensors, nothing fused.
    """
    ok, reason = available()
    if not ok:
        return reason
    if device is not None and device.type != "cuda" and not interpret_mode():
        return f"the Triton kernels run on CUDA tensors and the model is on {device}"
    return None


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on `t` runs the Triton kernels (else the PyTorch reference, same results)."""
    ok, _ = available()
    if not ok:
        return False
    return interpret_mode() or t.is_cuda


def norm_uses_triton(t: torch.Tensor) -> bool:
    """`use_triton` for the norm kernels, which fall back on their PyTorch references: float64 takes the
    reference too (the kernels compute in float32; gradcheck needs float64 throughout)."""
    return use_triton(t) and t.dtype != torch.float64


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


def load_kernels(module: str) -> ModuleType:
    """Import a Triton kernel module (lazily, see the module docstring) and check its mode."""
    mod = importlib.import_module(module)
    if mod.INTERPRETED != interpret_mode():
        then = "1" if mod.INTERPRETED else "unset"
        now = os.environ.get("TRITON_INTERPRET", "unset")
        raise RuntimeError(
            f"{module} was imported with TRITON_INTERPRET={then} but it is now {now}: Triton fixes the mode "
            "when kernels are defined, so set TRITON_INTERPRET before the first kernel call in the process")
    return mod


# Every buffer a kernel writes is allocated through these two functions, so tests can poison them.
def empty(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, device=device, dtype=dtype)


def empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty_like(t, dtype=dtype)  # keeps t's strides (channels-last stays channels-last)

