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

import ast
import difflib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

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


class UnknownInductorOption(SpeedOptionError):
    """An inductor option name this torch's torch._inductor.config lacks (a typo, or another version's)."""


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


_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def inductor_options(items: Iterable[str]) -> dict[str, Any]:
    """{name: value} from "NAME=VALUE" items, each NAME an option of torch._inductor.config (sections
    dotted: triton.mix_order_reduction) and VALUE read as that option's type (bools: 1/0, true/false,
    on/off); SpeedOptionError naming an unknown option (with its near names) or a value it cannot take.

    Why a harness needs them: inductor's passes are switches, and a pass that fails or slows a model
    (e.g. the mix-order reduction fusion) is found by timing the model with it off.
    """
    items = list(items)
    if not items:  # importing inductor is not free (and eager runs never need it)
        return {}
    import torch._inductor.config as inductor_config

    known = inductor_config.get_config_copy()
    options: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise SpeedOptionError(
                f"inductor option {item!r}: write NAME=VALUE, e.g. triton.mix_order_reduction=0"
            )
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UnknownInductorOption(
                f"inductor option {name!r}: torch._inductor.config has no such option{hint}"
            )
        options[name] = _typed(name, text, type(known[name]))
    return options


def _typed(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise SpeedOptionError(
                f"inductor option {name} is a bool: give 1/0, true/false or on/off, not {text!r}"
            )
        return text.lower() in _TRUE
    if kind is str:
        return text
    try:  # ints, floats, None, lists: Python literals
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise SpeedOptionError(f"inductor option {name}: {text!r} is not a Python literal") from None
    if kind in (int, float):
        allowed = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            what = "an int" if kind is int else "a number"
            raise SpeedOptionError(f"inductor option {name} is {what}, not {text!r}")
        return kind(value)
    return value


def compile_model(
    model: nn.Module, mode: str = "default", inductor: dict[str, Any] | None = None
) -> nn.Module:
    """torch.compile(model) as the harness does it ("default" is torch's mode=None); `inductor`:
    options from `inductor_options`, passed with the mode's own options as torch.compile's `options`
    (it takes a mode or options, not both). They apply to this compile only and are part of its
    backend's identity: set process-wide instead, a model of the same class compiled later in the
    process (an interleaved baseline) reused the graph compiled with them."""
    import torch

    check_compile_mode(mode)
    backend = os.environ.get(COMPILE_BACKEND_ENV, "inductor")
    # Static shapes: a second input shape (validation at another size, a sliding window's last, smaller
    # batch) compiles again for that shape rather than once for symbolic ones. Segmentation runs a few
    # fixed shapes; static kernels are faster, CUDA graphs need them, and the fast SwinUNETR's window
    # geometry would turn into guards and graph breaks on symbolic sizes.
    if backend != "inductor":  # modes are inductor settings; other backends take none
        return torch.compile(model, backend=backend, dynamic=False)
    if inductor:
        from torch._inductor import list_mode_options

        return torch.compile(model, options={**list_mode_options(mode), **inductor}, dynamic=False)
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


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
    inductor: dict[str, Any] | None = None,
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
    inductor: torch._inductor.config options for the compile (`inductor_options`); they need a
      compile_mode.
    """
    import torch

    check_compile_mode(compile_mode)
    if inductor and compile_mode is None:
        raise SpeedOptionError("inductor options set how torch.compile compiles: add --compile")
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
        from kernels import patch, patched_modules

        model = patch(model)
        if not patched_modules(model):  # else a row or run named fused_norm would time the eager model
            raise SpeedOptionError(f"--fused-norm: {type(model).__name__} has no norm + activation the "
                                   "kernels fuse (instance/group norm; identity, ReLU, LeakyReLU, PReLU)")
    if checkpoint_modules:
        from seg.recompute import recompute

        try:
            recompute(model, checkpoint_modules)
        except ValueError as err:
            raise SpeedOptionError(str(err)) from None
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if compile_mode is not None:
        model = compile_model(model, compile_mode, inductor)
    return model


def to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An input batch [B, C, X, Y, Z] in the memory format the model was given."""
    import torch

    return x.to(memory_format=torch.channels_last_3d) if channels_last else x


def cudnn_autotune(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the
    fastest (`cudnn.benchmark`): every input here has a fixed shape (the patch, the prepared volume,
    the sliding window), so the search runs once per shape, in the first steps. Training, every
    inference path (through seg.infer.load_ensemble) and the harness's cases all call this, so a
    benchmark times what they run."""
    import torch

    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


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
