"""`to_fast(model)`: turn a built MONAI SwinUNETR into the fast path in place, weights untouched."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from monai.networks.nets.swin_unetr import BasicLayer, SwinTransformerBlock, SwinUNETR, WindowAttention

from .attention import FastWindowAttention
from .blocks import FastBasicLayer, FastSwinTransformer, FastSwinTransformerBlock, FastSwinUNETR

FusedNorm = bool | Literal["auto"]


def kernels_status() -> tuple[bool, str]:
    """Whether the fused-norm kernels can be used for this model: (ok, why not / what runs)."""
    from kernels import available

    return available()


def _resolve_fused_norm(fused_norm: FusedNorm) -> bool:
    if fused_norm is False:
        return False
    ok, why = kernels_status()
    if fused_norm == "auto":
        # the Triton interpreter is correct but orders of magnitude slower: "auto" means a real GPU
        return ok and torch.cuda.is_available()
    if not ok:
        raise RuntimeError(f"fused_norm=True but the Triton kernels cannot run: {why}")
    return True


def to_fast(
    model: nn.Module, fused_norm: FusedNorm = "auto", use_checkpoint: bool | None = None,
    attention: str = "sdpa",
) -> nn.Module:
    """Make a MONAI SwinUNETR take the fast path; returns the same object (or kernels.patch's result).

    Same parameters (the same tensors), same state_dict keys, same function: window attention through
    SDPA with cached biases, shift/partition as cached index maps, tokens channels-last between
    stages, no graph breaks under torch.compile.
    fused_norm: "auto" applies kernels.patch (Triton LayerNorm in the Swin blocks, fused
      InstanceNorm+LeakyReLU in the conv blocks) when Triton can run on a CUDA device; True requires
      it; False keeps torch's ops. Either compiles without graph breaks (the kernels are opaque custom
      ops to torch.compile, which then does not fuse the norms into their neighbours itself).
    use_checkpoint: None keeps the model's setting; True/False sets gradient checkpointing of every
      Swin block (the seed preset turns it on; the fast path is meant to run without it).
    attention: "sdpa" (default) or "triton": the window attention through kernels.window_attention
      (experimental: Triton on CUDA, or the interpreter; measure it with kernels.bench_window_attention).
    """
    if not isinstance(model, SwinUNETR):
        raise TypeError(f"to_fast expects a MONAI SwinUNETR, got {type(model).__name__}")
    if model.use_hyena or (model.hyena_stages is not None and any(model.hyena_stages)):
        raise ValueError("to_fast supports windowed-attention stages only; this SwinUNETR uses Hyena stages")
    swin = model.swinViT
    stages = [stage[0] for stage in (swin.layers1, swin.layers2, swin.layers3, swin.layers4)]
    for layer in stages:  # check everything before changing anything
        _check_layer(layer)
    if attention not in FastWindowAttention.IMPLS:
        raise ValueError(f"to_fast: attention {attention!r}: choose {' or '.join(FastWindowAttention.IMPLS)}")
    use_kernels = _resolve_fused_norm(fused_norm)
    model.__class__ = FastSwinUNETR
    swin.__class__ = FastSwinTransformer
    for layer in stages:
        fast_layer(layer, use_checkpoint, attention)
    out_of_place_activations(model)
    if use_kernels:  # Swin LayerNorms and decoder InstanceNorm+LeakyReLU, by the same class swap
        import kernels

        model = kernels.patch(model)
    return model


def out_of_place_activations(model: nn.Module) -> int:
    """MONAI's conv blocks apply LeakyReLU in place to InstanceNorm's output, which is a view
    (instance_norm runs batch_norm on a reshape); autograd then clones and copies the whole
    gradient in backward (CopySlices). Out of place, an f24 128³ bf16 eager step moves 3.8 GB and
    60 ops less for 0.17 GiB more peak (profiles.footprint). Same function, no parameters; under
    torch.compile it makes no difference (in-place ops are functionalized). Returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.LeakyReLU) and module.inplace:
            module.inplace = False
            count += 1
    return count


def _check_layer(layer: nn.Module) -> None:
    if type(layer) not in (BasicLayer, FastBasicLayer):
        raise TypeError(f"to_fast: unexpected Swin stage {type(layer).__name__} (expected BasicLayer)")
    for blk in layer.blocks:
        if type(blk) not in (SwinTransformerBlock, FastSwinTransformerBlock):
            raise TypeError(f"to_fast: unexpected Swin block {type(blk).__name__}")
        if type(blk.attn) not in (WindowAttention, FastWindowAttention):
            raise TypeError(f"to_fast: unexpected window attention {type(blk.attn).__name__}")


def fast_layer(
    layer: nn.Module, use_checkpoint: bool | None = None, attention: str = "sdpa"
) -> FastBasicLayer:
    """Swap one MONAI BasicLayer (a Swin stage) and its blocks to the fast classes, in place."""
    _check_layer(layer)
    layer.__class__ = FastBasicLayer
    layer.init_fast()
    for blk in layer.blocks:
        blk.__class__ = FastSwinTransformerBlock
        blk.attn.__class__ = FastWindowAttention
        blk.attn.init_fast(attention)
        if use_checkpoint is not None:
            blk.use_checkpoint = use_checkpoint
    return layer


def is_fast(model: nn.Module) -> bool:
    return isinstance(model, FastSwinUNETR)
