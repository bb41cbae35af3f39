"""`layer_norm`: LayerNorm over the last dim (Swin tokens, C 24-768) as Triton custom ops with autograd."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import runtime
from .reference import layer_norm_bwd_ref, layer_norm_ref, layer_norm_stats_ref

_TILE_ELEMENTS = 2048  # elements per [BLOCK_M, BLOCK_D] tile on a GPU (bwd: ~90 registers at D=64)
_INTERPRET_TILE_ELEMENTS = 1 << 16  # the interpreter pays per tile op: fewer, larger tiles
_BWD_PROGRAMS_PER_SM = 4


def _blocks(D: int) -> tuple[int, int]:
    block_d = runtime.next_pow2(D)
    tile = _INTERPRET_TILE_ELEMENTS if runtime.interpret_mode() else _TILE_ELEMENTS
    return max(tile // block_d, 1), block_d


def _triton_forward(x, weight, bias, eps):
    K = runtime.load_kernels("kernels._layer_norm_triton")

    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    M, D = x2.shape
    if M * D >= 2**31:
        raise ValueError(f"layer_norm: {M} x {D} elements; the kernels index them in int32")
    block_m, block_d = _blocks(D)
    y = runtime.empty_like(x2)
    mean = runtime.empty(M, device=x.device, dtype=torch.float32)
    rstd = runtime.empty_like(mean)
    K._ln_fwd_kernel[(runtime.cdiv(M, block_m),)](
        x2, y, weight, bias, mean, rstd, M, D, eps, HAS_W=weight is not None, HAS_B=bias is not None,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=8 if block_d >= 1024 else 4)
    return y.reshape(x.shape), mean, rstd


def _triton_backward(dy, x, weight, bias, mean, rstd, want_dw, want_db):
    K = runtime.load_kernels("kernels._layer_norm_triton")

    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    M, D = x2.shape
    dy2 = dy.reshape(M, D).contiguous()
    block_m, block_d = _blocks(D)
    programs = min(runtime.cdiv(M, block_m), _BWD_PROGRAMS_PER_SM * runtime.sm_count(x2.device))
    dx = runtime.empty_like(x2)
    pdw = runtime.empty(programs, D, device=x2.device, dtype=torch.float32)
    pdb = runtime.empty_like(pdw)
    K._ln_bwd_kernel[(programs,)](x2, dy2, dx, weight, mean, rstd, pdw, pdb, M, D,
                                  HAS_W=weight is not None, BLOCK_M=block_m, BLOCK_D=block_d,
                                  num_warps=8 if block_d >= 1024 else 4)
    dw = pdw.sum(0).to(weight.dtype) if want_dw else None
    db = pdb.sum(0).to(bias.dtype) if want_db else None
    return dx.reshape(x.shape), dw, db


# Forward and backward as opaque custom ops, as for fused_norm_act (see there): no graph break under
# torch.compile; Triton where it can run, else the PyTorch reference. Outputs are contiguous.


@torch.library.custom_op("segbench::layer_norm_fwd", mutates_args=())
def _fwd_op(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
            ) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): y as `layer_norm`, float32 statistics per row for backward."""
    if not runtime.norm_uses_triton(x):
        mean, rstd = layer_norm_stats_ref(x, eps)
        return layer_norm_ref(x, weight, bias, eps).contiguous(), mean.float(), rstd.float()
    if x.numel() == 0:
        stats = x.new_zeros(math.prod(x.shape[:-1]), dtype=torch.float32)
        return x.new_empty(x.shape), stats, stats.clone()
    return _triton_forward(x, weight, bias, eps)


@_fwd_op.register_fake
def _fwd_fake(x, weight, bias, eps):
    stats = x.new_empty(math.prod(x.shape[:-1]), dtype=torch.float32)
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("segbench::layer_norm_bwd", mutates_args=())
def _bwd_op(dy: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, rstd: Tensor,
            eps: float, want_dw: bool, want_db: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias); dweight/dbias empty where not wanted."""
    if not runtime.norm_uses_triton(x):
        dx, dw, db = layer_norm_bwd_ref(dy, x, weight, bias, eps)
    elif x.numel() == 0:
        dw, db = (None if t is None else torch.zeros_like(t) for t in (weight, bias))
        dx = x.new_empty(x.shape)
    else:
        dx, dw, db = _triton_backward(dy, x, weight, bias, mean, rstd, want_dw, want_db)
    return dx, dw if want_dw else x.new_empty(0), db if want_db else x.new_empty(0)


@_bwd_op.register_fake
def _bwd_fake(dy, x, weight, bias, mean, rstd, eps, want_dw, want_db):
    return (x.new_empty(x.shape), torch.empty_like(weight) if want_dw else x.new_empty(0),
            torch.empty_like(bias) if want_db else x.new_empty(0))


def _fwd_setup_context(ctx, inputs, output):
    x, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.eps = eps
    ctx.mark_non_differentiable(mean, rstd)


def _fwd_backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    want_dw, want_db = weight is not None and need[1], bias is not None and need[2]
    dx, dw, db = torch.ops.segbench.layer_norm_bwd(dy, x, weight, bias, mean, rstd, ctx.eps, want_dw, want_db)
    return dx if need[0] else None, dw if want_dw else None, db if want_db else None, None


_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dimension; fp32 statistics, output in x's dtype (contiguous); differentiable.

    Without Triton (or CUDA) it runs the PyTorch reference.
    """
    D = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (D,):
            raise ValueError(f"layer_norm: {name} must have shape ({D},), got {tuple(t.shape)}")
    weight, bias = (None if t is None else t.contiguous() for t in (weight, bias))  # the kernels read W + d
    y, _, _ = torch.ops.segbench.layer_norm_fwd(x, weight, bias, float(eps))
    return y
