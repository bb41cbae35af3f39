"""`layer_norm`: LayerNorm over the last dimension (Swin tokens, C 24-768) as a Triton autograd op."""

from __future__ import annotations

import torch

from . import runtime
from .reference import layer_norm_ref

_TILE_ELEMENTS = 2048  # elements per [BLOCK_M, BLOCK_D] tile on a GPU (bwd: ~90 registers at D=64)
_INTERPRET_TILE_ELEMENTS = 1 << 16  # the interpreter pays per tile op: fewer, larger tiles
_BWD_PROGRAMS_PER_SM = 4


def _blocks(D: int) -> tuple[int, int]:
    block_d = runtime.next_pow2(D)
    tile = _INTERPRET_TILE_ELEMENTS if runtime.interpret_mode() else _TILE_ELEMENTS
    return max(tile // block_d, 1), block_d


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        K = runtime.load_kernels("kernels._layer_norm_triton")

        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
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
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.shape = shape
        return y.reshape(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        K = runtime.load_kernels("kernels._layer_norm_triton")

        x2, weight, bias, mean, rstd = ctx.saved_tensors
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
        dw = pdw.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = pdb.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx.reshape(ctx.shape), dw, db, None


@runtime.compile_boundary  # a graph break under torch.compile, as for fused_norm_act
def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dimension; fp32 statistics, output in x's dtype; differentiable.

    Without Triton (or CUDA) it runs the PyTorch reference.
    """
    D = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (D,):
            raise ValueError(f"layer_norm: {name} must have shape ({D},), got {tuple(t.shape)}")
    if not runtime.use_triton(x):
        return layer_norm_ref(x, weight, bias, eps)
    if x.numel() == 0:
        return torch.empty_like(x)
    return _LayerNorm.apply(x, weight, bias, eps)
