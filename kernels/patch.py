"""`patch(model)`: run MONAI's norm + activation pairs through the fused kernels, state_dict untouched.

Patching swaps the *class* of matching modules for a subclass whose `forward` calls
`fused_norm_act` / `layer_norm` with the module's own parameters. No submodule is added, removed or
renamed, so the state_dict keeps its keys and values, checkpoints load either way, and `unpatch`
swaps the classes back. MONAI classes are recognised by name, so this module imports no MONAI.

What is fused:
- `UnetBasicBlock` (DynUNet, SwinUNETR/UNETR decoders): norm1 + act, norm2 + act.
- `UnetResBlock`: norm1 + act, and norm2 + residual (conv3/norm3 path or the input) + act in one pass.
- `ADN` (MONAI UNet's `Convolution` units): N then A, with a plain dropout between them applied after
  the fused op, which is exact because the activations fused here are positively homogeneous
  (act(k x) = k act(x) for k >= 0) and dropout scales by 0 or 1/(1-p).
- `torch.nn.LayerNorm` over one dimension (Swin blocks, patch merging).
Norms that are not instance/group norm (batch norm, instance norm with running stats) and
activations other than identity/ReLU/LeakyReLU/PReLU keep their eager modules.
"""

from __future__ import annotations

import copy as copy_module

import torch
from torch import nn

from .fused_norm_act import fused_norm_act
from .layer_norm import layer_norm

_PLAIN_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _norm_spec(norm: nn.Module) -> dict | None:
    if isinstance(norm, nn.modules.instancenorm._InstanceNorm) and not norm.track_running_stats:
        return dict(num_groups=None, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    if isinstance(norm, nn.GroupNorm):
        return dict(num_groups=norm.num_groups, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    return None


def _act_spec(act: nn.Module | None) -> dict | None:
    if act is None or isinstance(act, nn.Identity):
        return dict(activation="identity")
    if isinstance(act, nn.ReLU):
        return dict(activation="relu")
    if isinstance(act, nn.LeakyReLU):
        return dict(activation="leaky_relu", negative_slope=act.negative_slope)
    if isinstance(act, nn.PReLU):
        return dict(activation="prelu", prelu_weight=act.weight)
    return None


def norm_act(norm: nn.Module, act: nn.Module | None, x: torch.Tensor,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """act(norm(x) [+ residual]) through the fused kernel when both modules are supported, else eagerly."""
    ns, acts = _norm_spec(norm), _act_spec(act)
    if ns is None or acts is None:
        y = norm(x)
        if residual is not None:
            y = y + residual
        return y if act is None else act(y)
    return fused_norm_act(x, **ns, **acts, residual=residual)


def _basic_block_forward(self, inp):
    out = norm_act(self.norm1, self.lrelu, self.conv1(inp))
    return norm_act(self.norm2, self.lrelu, self.conv2(out))


def _res_block_forward(self, inp):
    residual = inp
    out = norm_act(self.norm1, self.lrelu, self.conv1(inp))
    out = self.conv2(out)
    if hasattr(self, "conv3"):
        residual = self.conv3(residual)
    if hasattr(self, "norm3"):
        residual = norm_act(self.norm3, None, residual)
    return norm_act(self.norm2, self.lrelu, out, residual=residual)


def _adn_forward(self, x):
    mods = list(self._modules.items())
    i = 0
    while i < len(mods):
        name, mod = mods[i]
        if name == "N" and _norm_spec(mod) is not None:
            j = i + 1
            while j < len(mods) and isinstance(mods[j][1], _PLAIN_DROPOUT):
                j += 1
            act = mods[j][1] if j < len(mods) and mods[j][0] == "A" else None
            if _act_spec(act) is not None:
                x = norm_act(mod, act, x)
                if any(drop.p > 0 for _, drop in mods[i + 1:j]):
                    # dropout draws its mask in memory order, and eager InstanceNorm returns a contiguous
                    # tensor for a channels-last input: the same layout, the same mask as eager's
                    x = x.contiguous()
                for _, drop in mods[i + 1:j]:  # after the activation: exact, see the module docstring
                    x = drop(x)
                i = j + 1 if act is not None else j
                continue
        x = mod(x)
        i += 1
    return x


def _layer_norm_forward(self, x):
    return layer_norm(x, self.weight, self.bias, self.eps)


def _adn_act(m: nn.Module) -> nn.Module | None:
    """The activation that follows an ADN's norm (past plain dropouts), as _adn_forward finds it."""
    names = list(m._modules)
    after = [k for k in names[names.index("N") + 1:] if not isinstance(m._modules[k], _PLAIN_DROPOUT)]
    return m._modules["A"] if after[:1] == ["A"] else None


def _fusable(m: nn.Module, cls: type | None = None):
    """The fused forward for `m` (taken as a `cls`, by default its own class), or None when `m` is not a
    supported module or nothing in it would fuse."""
    cls = cls or type(m)
    monai = cls.__module__.startswith("monai.")
    if monai and cls.__name__ in ("UnetBasicBlock", "UnetResBlock"):
        norms = [m.norm1, m.norm2] + ([m.norm3] if hasattr(m, "norm3") else [])
        if all(_norm_spec(n) is not None for n in norms) and _act_spec(m.lrelu) is not None:
            return _res_block_forward if cls.__name__ == "UnetResBlock" else _basic_block_forward
    elif monai and cls.__name__ == "ADN":
        if "N" in m._modules and _norm_spec(m.N) is not None and _act_spec(_adn_act(m)) is not None:
            return _adn_forward
    elif cls is nn.LayerNorm and len(m.normalized_shape) == 1:
        return _layer_norm_forward
    return None


_FUSED_CLASSES: dict[type, type] = {}


# the submodules a fused forward runs through the kernels, never through their own forward
FUSED_PARTS = ("norm1", "norm2", "norm3", "lrelu", "N", "A")


def _fused_class(cls: type, forward) -> type:
    if cls not in _FUSED_CLASSES:
        _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {
            "forward": forward, "_segbench_unfused": cls, "__module__": __name__,
            "__qualname__": f"Fused{cls.__name__}", "__reduce_ex__": _reduce_fused,
            # how to make this class again (pickle; seg.recompute's wrapper pickles through it)
            "_segbench_recipe": (_fused_class, (cls, forward))})
    return _FUSED_CLASSES[cls]


def _fused_instance(cls: type, forward) -> nn.Module:
    fused = _fused_class(cls, forward)
    return fused.__new__(fused)


def _reduce_fused(self: nn.Module, protocol: int):
    """A pickled patched model (torch.save(model), deepcopy) names the original class and the fused
    forward, both importable, instead of the class made at run time."""
    fused = _fused_base(self)
    return _fused_instance, (fused._segbench_unfused, fused.forward), self.__getstate__()


def _fused_base(m: nn.Module) -> type | None:
    """The fused class in `m`'s class hierarchy (itself, or under a wrapper such as seg.recompute's)."""
    return next((c for c in type(m).__mro__ if "_segbench_unfused" in c.__dict__), None)


def _checkpointed_plain(m: nn.Module | None) -> type | None:
    """The class seg.recompute wrapped `m`'s in (its wrapper names it), else None; no import of seg."""
    return getattr(type(m), "_segbench_plain", None)


def is_patched(m: nn.Module) -> bool:
    return _fused_base(m) is not None


def patch(model: nn.Module, *, copy: bool = False) -> nn.Module:
    """Fuse the supported norm + activation pairs of `model` (in place, or of a deep copy).

    Returns the model; its state_dict has the same keys and values as before. ValueError naming a
    module that seg.recompute wrapped and that would fuse: patch first, then recompute.
    """
    if copy:
        model = copy_module.deepcopy(model)
    for name, m in model.named_modules():
        plain = _checkpointed_plain(m)
        if plain is not None and not is_patched(m) and _fusable(m, plain) is not None:
            raise ValueError(f"kernels.patch: {name} ({plain.__name__}) is checkpointed (seg.recompute): "
                             "patch the model first, then recompute")
        inner = [c for c in FUSED_PARTS if _checkpointed_plain(m._modules.get(c)) is not None]
        if inner and not is_patched(m) and _fusable(m) is not None:  # the fused forward skips their forward
            raise ValueError(f"kernels.patch: {name}.{inner[0]} is checkpointed inside a block that fuses "
                             "it: checkpoint the block around it")
    for m in model.modules():
        if is_patched(m):
            continue
        forward = _fusable(m)
        if forward is not None:
            m.__class__ = _fused_class(type(m), forward)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch` in place: every fused module gets its original class back. ValueError naming a module
    whose class was wrapped again after patching (seg.recompute): undo that wrapper first."""
    for name, m in model.named_modules():
        fused = _fused_base(m)
        if fused is not None and type(m) is not fused:
            raise ValueError(f"kernels.unpatch: {name or 'the model'} ({type(m).__name__}) was wrapped after "
                             "patching; undo that wrapper first")
    for m in model.modules():
        if is_patched(m):
            m.__class__ = type(m)._segbench_unfused
    return model


def patched_modules(model: nn.Module) -> list[str]:
    """Qualified names of the modules that run fused (for logs and reports)."""
    return [name for name, m in model.named_modules() if is_patched(m)]
