"""A guard for a CPU bug: oneDNN's bf16 conv3d weight gradient is garbage on 2-voxel-wide inputs.

Found by chasing a NaN in bf16 CPU training (segbench train, SwinUNETR at 64³, whose bottleneck
block convolves a 2³ map): on this project's CI CPU (AMD EPYC, AVX-512 with avx512_bf16; torch
2.13.0+cpu) `aten.convolution_backward` in bf16 through oneDNN returns a weight gradient that is
wrong by up to 1e37 or inf/NaN for stride-1 convolutions (kernel 3 or 5, padded) over maps 2 voxels
wide — measured at 2³ and 2×2×4 (not 4×4×2, 1×2×8 or 3³), 17+ channels (16→16 is right, 16→32
is not), e.g. (1, 32, 2, 2, 2) ⊛ (32, 32, 3, 3, 3). Forward and input gradient are right; fp32,
fp16, transposed and strided convolutions, 2D and PyTorch's own (non-oneDNN) bf16 kernels are right.
The garbage is whatever the buffer held, so eager runs often stay finite by luck (and train on a
wrong gradient) while a fresh torch.compile turns NaN: stock MONAI and the fast SwinUNETR alike.
CUDA (cuDNN) is not affected. A UNet-family model meets it when its deepest level is 2 voxels wide
(SwinUNETR downsamples 32×: a 64³ input).

`guard` turns oneDNN off for a bf16 CPU step where the probe finds the bug and the model has such a
convolution for this input shape (one forward on fake tensors finds out): right gradients from
PyTorch's own bf16 convolutions, which are slow — SwinUNETR f12 at 64³ steps in 23.7 s instead of
fp32's 2.1 s on this 2-core CPU. Other shapes keep oneDNN. `python -m seg.cpu_bf16` prints the probe.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from tqdm import tqdm

from seg.train.checkpoint import bare_module

# A shape that shows it on an affected CPU: 32 channels on a 2³ map, kernel 3, padding 1.
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


_RISKY: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], bool]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _faked(model: nn.Module, mode: FakeTensorMode) -> Iterator[None]:
    """Parameters and buffers (non-persistent ones too) as fakes inside the block, the real ones back
    after it: a module caching something keyed by a real parameter (the fast SwinUNETR's attention
    biases) must not keep a fake. Module by module, not torch.func.functional_call, which leaves fakes
    behind in a module registered under two names (DynUNet's skip_layers hold its blocks again)."""
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    fakes: dict[int, torch.Tensor] = {}  # one fake per real tensor, shared where the model shares

    def fake(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        if id(t) not in fakes:
            fakes[id(t)] = mode.from_tensor(t)
        return fakes[id(t)]

    try:
        for m, params, buffers in saved:
            m._parameters.update({k: fake(v) for k, v in params.items()})
            m._buffers.update({k: fake(v) for k, v in buffers.items()})
        yield
    finally:
        for m, params, buffers in saved:
            m._parameters.update(params)
            m._buffers.update(buffers)


def has_two_wide_conv(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether a trainable stride-1 Conv3d (kernel > 1) of `model` sees a 2-voxel-wide map for an
    input shaped like `x` — where the bug strikes (measured: 2³ and 2×2×4 maps, 17+ channels or
    16→32; deliberately broader: any axis of width 2, any channel count). One forward on fake
    tensors per input shape, cached."""
    model = bare_module(model)  # a fake forward must not go through torch.compile or DDP
    shape = tuple(x.shape)
    seen = _RISKY.setdefault(model, {})
    if shape not in seen:
        hits: list[bool] = []

        def record(module: nn.Conv3d, args: tuple) -> None:
            width_two = any(d == 2 for d in args[0].shape[2:])
            hits.append(width_two and module.stride == (1, 1, 1) and max(module.kernel_size) > 1)

        convs = [m for m in model.modules() if isinstance(m, nn.Conv3d) and m.weight.requires_grad]
        handles = [m.register_forward_pre_hook(record) for m in convs]
        was_training = model.training
        try:
            model.eval()  # no running-stat updates
            with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad(), _faked(model, mode):
                model(mode.from_tensor(x))
            seen[shape] = any(hits)
        except RuntimeError:  # a model fake tensors cannot run (data-dependent shapes): assume the worst
            seen[shape] = True
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
    return seen[shape]


@functools.cache
def _warn_once() -> None:
    # one line, not a warning with a source line that lands inside a progress bar
    tqdm.write("note: this CPU's oneDNN computes wrong bf16 conv3d weight gradients on 2-voxel-wide maps "
               "(see seg.cpu_bf16): bf16 training steps through such a map run with oneDNN off (right, "
               "up to ~10x slower; --precision fp32 keeps oneDNN)", file=sys.stderr)


def active(precision: str, model: nn.Module, x: torch.Tensor) -> bool:
    """Whether `guard` turns oneDNN off for this step: an affected CPU and a 2-voxel-wide conv."""
    return affected(precision, x) and has_two_wide_conv(model, x)


def guard(precision: str, model: nn.Module, x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context for one training step of `model` on input `x` (forward and backward): oneDNN off
    where the CPU is `affected` and the model convolves a 2-voxel-wide map."""
    if not active(precision, model, x):
        return contextlib.nullcontext()
    _warn_once()
    return _onednn(False)


if __name__ == "__main__":
    with _onednn(True):
        print(f"oneDNN on:  bf16 conv3d weight-gradient relative error {probe_rel_error():.3g}")
    with _onednn(False):
        print(f"oneDNN off: bf16 conv3d weight-gradient relative error {probe_rel_error():.3g}")
    print("affected" if not conv3d_weight_grad_ok() else "not affected")
