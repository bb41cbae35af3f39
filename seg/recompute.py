"""Selective activation checkpointing: recompute chosen submodules in backward instead of keeping
their activations.

MONAI's own switch (SwinUNETR `use_checkpoint`) checkpoints every Swin block — the cheap part once
attention goes through SDPA (seg.swin_fast). At 128³ the activations that fill a small card are in
the full-resolution conv blocks: SwinUNETR's encoder1 keeps ~10 tensors of 128³ x feature channels
(~0.5 GiB at feature 24 in bf16, ~1 GiB at 48; profiles.footprint). `recompute(model, ["encoder1"])`
keeps only such a block's inputs and runs its forward again during backward: one extra forward of
that block per step for its activations' memory.

Any model, any submodule that is called through its `forward`: names are `named_modules()` names,
or fnmatch patterns (`upsamples.*`); a match inside another match is dropped (nested checkpoints
would recompute twice). The module's class is swapped for a subclass (as kernels.patch and
seg.swin_fast do), so parameters, state_dict keys and checkpoints stay as they are; train-mode
dropout draws the same masks in the recomputation (torch.utils.checkpoint restores the RNG).
Under torch.compile the checkpoint becomes a region that AOTAutograd recomputes (no graph break).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

_RECOMPUTED_CLASSES: dict[type, type] = {}


class _Recomputed(nn.Module):
    """Mixin: forward under a non-reentrant checkpoint whenever autograd records it."""

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return super().forward(*args, **kwargs)
        # the inputs' versions, outside torch.compile (AOTAutograd sees in-place ops itself)
        inputs = [] if torch.compiler.is_compiling() else [
            (a, a._version) for a in args if isinstance(a, torch.Tensor)]
        out = checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        # the checkpoint keeps the inputs to recompute from: a block that overwrote one (its first op an
        # in-place activation) would fail in backward with an error that names no module
        if any(a._version != version for a, version in inputs):
            name = type(self)._segbench_plain.__name__
            raise ValueError(f"checkpoint modules: {name} changed its input in place; checkpoint the block "
                             "around it instead")
        return out


def _recomputed_class(plain: type | tuple) -> type:
    """The wrapper of `plain`: a class, or the recipe of one made at run time (see `_reduce_recomputed`)."""
    if not isinstance(plain, type):
        make, args = plain
        plain = make(*args)
    if plain not in _RECOMPUTED_CLASSES:
        _RECOMPUTED_CLASSES[plain] = type(f"Recomputed{plain.__name__}", (_Recomputed, plain), {
            "_segbench_plain": plain, "__module__": __name__, "__qualname__": f"Recomputed{plain.__name__}",
            "__reduce_ex__": _reduce_recomputed})
    return _RECOMPUTED_CLASSES[plain]


def _recomputed_instance(plain: type | tuple) -> nn.Module:
    cls = _recomputed_class(plain)
    return cls.__new__(cls)


def _reduce_recomputed(self: nn.Module, protocol: int):
    """Pickle (torch.save(model), deepcopy) by the plain class instead of the class made at run time. A
    plain class made at run time too (kernels.patch's fused classes) is named by its `_segbench_recipe`:
    (function, arguments) that make it again."""
    plain = type(self)._segbench_plain
    return _recomputed_instance, (plain.__dict__.get("_segbench_recipe", plain),), self.__getstate__()


def is_recomputed(module: nn.Module) -> bool:
    return isinstance(module, _Recomputed)


def match_modules(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """The outermost module names of `model` that `patterns` (names or fnmatch patterns) select.

    ValueError names a pattern that selects nothing, with the top-level names to choose from."""
    names = [name for name, _ in model.named_modules() if name]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            top = sorted({name.split(".")[0] for name in names})
            raise ValueError(f"checkpoint modules: {pattern!r} names no submodule of {type(model).__name__} "
                             f"(top-level modules: {', '.join(top)})")
        chosen.update(hits)
    return [name for name in names if name in chosen
            and not any(name.startswith(other + ".") for other in chosen)]


def recompute(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Checkpoint the submodules of `model` that `patterns` select, in place; returns their names.

    ValueError when a pattern selects nothing, a module that works in place on its input (an
    `inplace=True` activation), one holding norm running statistics (batch or instance norm with
    track_running_stats: updated again by the recomputation), or a module that is not run through its
    `forward` (a container such as ModuleList, a norm or activation that kernels.patch fused into its
    block, or a block that seg.swin_fast calls through `forward_tokens`: checkpoint those with the
    model's own switch, e.g. SwinUNETR use_checkpoint / variant `ckpt`).
    """
    from kernels.patch import FUSED_PARTS, is_patched  # the kernels' Triton loads only when they run

    names = match_modules(model, patterns)
    for name in names:
        module = model.get_submodule(name)
        if type(module).forward is nn.Module.forward:
            raise ValueError(
                f"checkpoint modules: {name} ({type(module).__name__}) has no forward of its own")
        if getattr(module, "inplace", False):  # it would overwrite the input the checkpoint keeps
            raise ValueError(f"checkpoint modules: {name} ({type(module).__name__}) works in place on its "
                             "input; checkpoint the block around it instead")
        stats = [f"{name}.{sub}" if sub else name for sub, m in module.named_modules()
                 if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
        if stats:  # the recomputation would update them a second time each step
            raise ValueError(f"checkpoint modules: {name} ({type(module).__name__}) holds norm running "
                             f"statistics ({', '.join(stats[:3])}); checkpoint blocks without them")
        parent_name, _, part = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if part in FUSED_PARTS and is_patched(parent):  # its wrapper's forward would never run
            raise ValueError(f"checkpoint modules: {name} runs fused inside {parent_name or 'the model'} "
                             f"({type(parent).__name__}): checkpoint the block around it")
        if getattr(module, "fast_entry", None):
            raise ValueError(f"checkpoint modules: {name} ({type(module).__name__}) runs through "
                             f"{module.fast_entry}, not forward, on the fast path: use the model's own "
                             "checkpointing switch (SwinUNETR use_checkpoint, variant ckpt) for Swin blocks")
    for name in names:
        module = model.get_submodule(name)
        if not is_recomputed(module):
            module.__class__ = _recomputed_class(type(module))
    return names


def unrecompute(model: nn.Module) -> nn.Module:
    """Undo `recompute` in place."""
    for module in model.modules():
        if is_recomputed(module):
            module.__class__ = type(module)._segbench_plain
    return model


def recomputed_modules(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if is_recomputed(module)]
