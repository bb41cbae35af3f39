"""A guard for a CPU bug: oneDNN's bf16 conv3d weight gradient is garbage on 2-voxel-wide inputs.

Found by chasing a NaN in bf16 CPU training (segbench train, SwinUNETR at 64³, whose bottleneck
block convolves a 2³ map): on this project's CI CPU (AMD EPYC, AVX-512 with avx512_bf16; torch
2.13.0+cpu) `aten.convolution_backward` in bf16 through oneDNN returns a weight gradient that is
wrong by 1e30 or inf/NaN whenever a spatial axis is 2 wide, the kernel 3 with padding 1 and the
channels ≥ 24 — e.g. (1, 32, 2, 2, 2) ⊛ (32, 32, 3, 3, 3). Forward and input gradient are right;
fp32, fp16, 2D convolutions and PyTorch's own (non-oneDNN) bf16 kernels are right. The garbage is
whatever the buffer held, so eager runs often stay finite by luck (and train on a wrong gradient)
while a fresh torch.compile turns NaN: stock MONAI and the fast SwinUNETR alike. CUDA (cuDNN) is
not affected. The UNet-family bottleneck reaches 2³ whenever the input is 32× its deepest stride.

`guard` turns oneDNN off for a bf16 CPU step where the probe finds the bug: slower convolutions,
right gradients. `python -m seg.cpu_bf16` prints the probe's numbers.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensor

# The smallest shape that shows it (channels 24+; 16 are right).
PROBE_CHANNELS, PROBE_WIDTH = 32, 2
TOLERANCE = 0.05  # right bf16 results are within ~0.5 % of fp64 here; wrong ones off by 1 to 1e30 or inf


@contextlib.contextmanager
def _onednn(enabled: bool):
    # Only the on/off switch: torch.backends.mkldnn.flags also sets the TF32 switch, which warns on
    # every entry on builds without Intel GPU support.
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def probe_rel_error() -> float:
    """Max relative error of the bf16 conv3d weight gradient at the probe shape, against float64 on
    the same bf16-rounded inputs (inf where the result is not finite)."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, PROBE_CHANNELS) + (PROBE_WIDTH,) * 3
    grad = torch.randn(shape, generator=gen).bfloat16()
    x = torch.randn(shape, generator=gen).bfloat16()
    w = (torch.randn(PROBE_CHANNELS, PROBE_CHANNELS, 3, 3, 3, generator=gen) * 0.02).bfloat16()

    def weight_grad(g, i, k):
        return torch.ops.aten.convolution_backward(
            g, i, k, [0], [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1, [False, True, False]
        )[1]

    got = weight_grad(grad, x, w).double()
    want = weight_grad(grad.double(), x.double(), w.double())
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - want).abs().max() / want.abs().max())


@functools.cache
def conv3d_weight_grad_ok() -> bool:
    """Whether this CPU's bf16 conv3d weight gradient (oneDNN, when enabled) is right. Cached."""
    if not torch.backends.mkldnn.is_available():
        return True
    with _onednn(True):
        # Two tries: the wrong result is uninitialised memory, which may by chance look right once.
        return max(probe_rel_error(), probe_rel_error()) < TOLERANCE


def affected(precision: str, x: torch.Tensor) -> bool:
    """True where a `precision` training step on `x`'s device would meet the bug. Fake tensors
    (profiles.footprint, which emulates CUDA) never are, and must not run the probe."""
    return (
        precision == "bf16"
        and x.device.type == "cpu"
        and not isinstance(x, FakeTensor)
        and not conv3d_weight_grad_ok()
    )


@functools.cache
def _warn_once() -> None:
    warnings.warn(
        "this CPU's oneDNN computes wrong bf16 conv3d weight gradients on 2-voxel-wide maps "
        "(see seg.cpu_bf16): bf16 training steps on the CPU run with oneDNN off (right, slower)",
        RuntimeWarning,
        stacklevel=3,
    )


def guard(precision: str, x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context for one training step on input `x` (forward and backward): oneDNN off where
    `affected`."""
    if not affected(precision, x):
        return contextlib.nullcontext()
    _warn_once()
    return _onednn(False)


if __name__ == "__main__":
    with _onednn(True):
        print(f"oneDNN on:  bf16 conv3d weight-gradient relative error {probe_rel_error():.3g}")
    with _onednn(False):
        print(f"oneDNN off: bf16 conv3d weight-gradient relative error {probe_rel_error():.3g}")
    print("affected" if not conv3d_weight_grad_ok() else "not affected")
