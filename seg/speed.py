"""Speed switches for training and inference, applied the way `bench` measures them.

`apply_speed_options(model, ...)` turns a built model (already on its device, weights loaded or
not: every transform keeps the parameters and their state_dict keys) into the variant the harness
times as `swin_fast`, `fused_norm`, `ckpt:MODULES`, `channels_last` and `compile[:MODE]`, in the
harness's order (bench.workloads.common.build_model): fast SwinUNETR path, else kernels.patch, then
selective checkpointing (seg.recompute), then channels_last_3d, then torch.compile. Inputs go
through `to_input`. None of them changes the function the model computes (fp32 results agree to
rounding), so checkpoints stay plain state_dicts of the bare module.

Importing this module is cheap (standard library only); torch loads inside the functions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Modes whose inductor config turns on CUDA graphs (triton.cudagraphs).
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
# Test-only: another torch.compile backend (e.g. aot_eager), so CPU tests exercise the compiled
# path (dynamo + AOTAutograd) without paying inductor's C++ compile. Not a user option.
COMPILE_BACKEND_ENV = "SEGBENCH_COMPILE_BACKEND"


class SpeedOptionError(ValueError):
    """A speed option that cannot apply to this model or device; the message says why."""


def check_compile_mode(mode: str | None) -> None:
    if mode is not None and mode not in COMPILE_MODES:
        raise SpeedOptionError(f"torch.compile mode {mode!r}: choose {', '.join(COMPILE_MODES)}")


def check_triton_options(
    device: torch.device, fused_norm: bool = False, swin_attention: str = "sdpa"
) -> None:
    """SpeedOptionError naming the first option asked for that needs the Triton kernels, and why, when
    they cannot run for a model on `device`."""
    from kernels.runtime import unavailable_reason

    wanted = [flag for flag, on in (("--fused-norm", fused_norm),
                                    ("triton window attention", swin_attention == "triton")) if on]
    if wanted and (why := unavailable_reason(device)) is not None:
        raise SpeedOptionError(f"{wanted[0]}: the Triton kernels cannot run here: {why}")


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile(model) as the harness does it ("default" is torch's mode=None)."""
    import torch

    check_compile_mode(mode)
    backend = os.environ.get(COMPILE_BACKEND_ENV, "inductor")
    if backend != "inductor":  # modes are inductor settings; other backends take none
        return torch.compile(model, backend=backend)
    return torch.compile(model, mode=None if mode == "default" else mode)


def apply_speed_options(
    model: nn.Module,
    *,
    fast: bool = False,
    fused_norm: bool = False,
    channels_last: bool = False,
    compile_mode: str | None = None,
    checkpoint_modules: tuple[str, ...] = (),
    require_kernels: bool = True,
    swin_attention: str = "sdpa",
) -> nn.Module:
    """`model` with the speed options applied (in place, except torch.compile's wrapper).

    fast: seg.swin_fast.to_fast (MONAI SwinUNETR only), without fused norms of its own ("auto" is
      not used: the flag says what runs).
    fused_norm: kernels.patch (Triton fused InstanceNorm+activation, LayerNorm); SpeedOptionError
      (a ValueError) naming why when the kernels cannot run for this model's device, unless
      `require_kernels` is False: then they are patched in anyway, for tracing on fake tensors (their
      custom ops' fake kernels allocate what the CUDA kernels do: profiles.footprint's estimates).
    checkpoint_modules: submodule names or fnmatch patterns to recompute in backward
      (seg.recompute; after the norms are patched, so the kernels still recognise MONAI's blocks);
      SpeedOptionError when one selects nothing or cannot be checkpointed.
    swin_attention: the fast path's window attention, "sdpa" or "triton" (kernels.window_attention,
      experimental; Triton must run for the model's device, as for fused_norm).
    channels_last: parameters in channels_last_3d (feed inputs through `to_input`).
    compile_mode: None (eager) or a torch.compile mode; the returned module is then the
      OptimizedModule, whose `_orig_mod` is the transformed model (checkpoint that one:
      seg.train.checkpoint.bare_module unwraps it).
    """
    import torch

    check_compile_mode(compile_mode)
    if swin_attention != "sdpa" and not fast:
        raise SpeedOptionError(f"window attention {swin_attention!r} is an option of the fast SwinUNETR path")
    if require_kernels:
        check_triton_options(next(model.parameters()).device, fused_norm, swin_attention)
    if fast:
        from monai.networks.nets import SwinUNETR

        from seg.swin_fast import to_fast

        if not isinstance(model, SwinUNETR):
            raise SpeedOptionError(f"--fast is SwinUNETR's fast path; this model is a {type(model).__name__}")
        try:
            model = to_fast(model, fused_norm=False, attention=swin_attention)
        except ValueError as err:
            raise SpeedOptionError(str(err)) from None
    if fused_norm:  # after to_fast, as to_fast(fused_norm=True) does it
        from kernels import patch

        model = patch(model)
    if checkpoint_modules:
        from seg.recompute import recompute

        try:
            recompute(model, checkpoint_modules)
        except ValueError as err:
            raise SpeedOptionError(str(err)) from None
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if compile_mode is not None:
        model = compile_model(model, compile_mode)
    return model


def to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An input batch [B, C, X, Y, Z] in the memory format the model was given."""
    import torch

    return x.to(memory_format=torch.channels_last_3d) if channels_last else x


def step_begin(compile_mode: str | None) -> None:
    """Call at the start of every training step of a model compiled with a CUDA-graph mode.

    CUDA graph trees replay every step into the same static memory pool, so a replay overwrites
    the previous step's outputs. Without a mark they guess where a step begins (a new compiled
    invocation after all pending backwards ran) and otherwise keep the earlier outputs alive by
    recording further graphs (memory) or fail with "accessing tensor output of CUDAGraphs that
    has been overwritten by a subsequent run". The mark says: the last step's outputs are dead.
    """
    if compile_mode in CUDAGRAPH_MODES:
        import torch

        torch.compiler.cudagraph_mark_step_begin()
