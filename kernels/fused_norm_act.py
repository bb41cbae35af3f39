"""`fused_norm_act`: group/instance norm + affine + residual + activation in one Triton pipeline.

Forward reads x twice (statistics, then apply) and writes y once; backward reads x and dy twice
(the two sums, then dx) and writes dx (and d residual). Only the per-(n, group) mean and rstd are
saved besides x, plus the residual when the activation must re-derive its sign. The kernels live in
`_fused_norm_act_triton.py`; this module plans the launches and registers forward and backward as
the custom ops `segbench::fused_norm_act_fwd` / `_bwd` (opaque to torch.compile: no graph break).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import runtime
from .reference import (
    ACTIVATIONS,
    fused_norm_act_bwd_ref,
    fused_norm_act_ref,
    group_stats_ref,
    is_channels_last,
    to_layout,
)


@dataclass(frozen=True)
class SplitPolicy:
    """How a reduction is tiled and split across programs (tune on the GPU, not here)."""

    tile_elements: int = 4096  # elements of one [BLOCK_C, BLOCK_S] tile held in registers
    max_block_c: int = 64  # channels per tile in channels-last (one tile row = BLOCK_C contiguous values)
    programs_per_sm: int = 32  # programs per SM: ~6 rounds of ~5 resident ones keep the last round short
    min_tiles_per_program: int = 4  # never split a row so finely that a program walks fewer tiles
    num_warps: int = 8


POLICY = SplitPolicy()
# The interpreter runs programs one after another with numpy per tile op: few, large tiles are fastest.
INTERPRET_POLICY = SplitPolicy(tile_elements=1 << 16, max_block_c=256, programs_per_sm=1)


def default_policy() -> SplitPolicy:
    return INTERPRET_POLICY if runtime.interpret_mode() else POLICY


@dataclass(frozen=True)
class Plan:
    """Launch geometry of one call: tile shape, spatial positions per program, grid."""

    N: int
    C: int
    S: int
    G: int
    channels_last: bool
    block_s: int
    block_c: int
    chunk: int  # spatial positions one program reduces (a multiple of block_s)
    num_splits: int

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.num_splits, runtime.cdiv(self.C, self.block_c), self.N)


def plan(x: torch.Tensor, groups: int, channels_last: bool, split_size: int | None,
         policy: SplitPolicy | None = None) -> Plan:
    """Tile so that the contiguous axis is long and the grid fills the device.

    `split_size` forces the spatial positions per program (tests use a small one to exercise the
    split path); None picks a split giving about `programs_per_sm` programs per SM.
    """
    policy = policy or default_policy()
    N, C = x.shape[:2]
    S = x[0, 0].numel()
    if C * S >= 2**31:
        raise ValueError(f"fused_norm_act: one sample has {C * S} elements; the kernels index it in int32")
    if channels_last:
        block_c = min(runtime.next_pow2(C), policy.max_block_c)
        block_s = min(max(policy.tile_elements // block_c, 1), runtime.next_pow2(S))
    else:
        block_s = min(policy.tile_elements, runtime.next_pow2(S))
        block_c = min(runtime.next_pow2(C), max(policy.tile_elements // block_s, 1))
    if split_size is None:
        rows = N * runtime.cdiv(C, block_c)
        splits = runtime.cdiv(policy.programs_per_sm * runtime.sm_count(x.device), rows)
        splits = max(min(splits, S // (policy.min_tiles_per_program * block_s)), 1)
        chunk = runtime.cdiv(S, splits)
    else:
        if split_size < 1:
            raise ValueError(f"fused_norm_act: split_size must be >= 1, got {split_size}")
        block_s = min(block_s, runtime.prev_pow2(split_size))
        chunk = split_size
    chunk = runtime.cdiv(chunk, block_s) * block_s
    return Plan(N, C, S, groups, channels_last, block_s, block_c, chunk, runtime.cdiv(S, chunk))


def _flags(weight, bias, residual, activation, prelu_weight, C) -> dict:
    return dict(
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        HAS_RES=residual is not None,
        HAS_ACT=activation != "identity",
        PRELU=activation == "prelu",
        PRELU_PER_CHANNEL=activation == "prelu" and prelu_weight.numel() == C and C > 1,
    )


def _slope(activation: str, negative_slope: float) -> float:
    return 0.0 if activation == "relu" else float(negative_slope)


def _triton_forward(x, weight, bias, prelu_weight, residual, groups, activation, negative_slope, eps,
                    split_size):
    K = runtime.load_kernels("kernels._fused_norm_act_triton")

    cl = is_channels_last(x)
    x = to_layout(x, cl)
    r = None if residual is None else to_layout(residual, cl)
    p = plan(x, groups, cl, split_size)
    f32 = dict(device=x.device, dtype=torch.float32)
    pmean = runtime.empty(p.N, p.C, p.num_splits, **f32)
    pm2 = runtime.empty_like(pmean)
    mean = runtime.empty(p.N * groups, **f32)
    rstd = runtime.empty_like(mean)
    y = runtime.empty_like(x)
    cg = p.C // groups
    blocks = dict(BLOCK_S=p.block_s, BLOCK_C=p.block_c, num_warps=default_policy().num_warps)
    K._stats_kernel[p.grid](x, pmean, pm2, p.C, p.S, p.chunk, p.num_splits, CHANNELS_LAST=cl, **blocks)
    K._combine_kernel[(p.N * groups,)](
        pmean, pm2, mean, rstd, p.C, p.S, cg, groups, p.chunk, p.num_splits, float(cg * p.S), eps,
        BLOCK=min(runtime.next_pow2(cg * p.num_splits), 1024))
    flags = _flags(weight, bias, r, activation, prelu_weight, p.C)
    K._apply_kernel[p.grid](x, y, r, weight, bias, prelu_weight, mean, rstd, p.C, p.S, cg, groups,
                            p.chunk, _slope(activation, negative_slope), CHANNELS_LAST=cl, **flags, **blocks)
    return y, mean, rstd


def _triton_backward(dy, x, weight, bias, prelu_weight, r, mean, rstd, groups, activation, negative_slope,
                     split_size, want_dw, want_db, want_dpw, residual_dtype):
    """dx, dw, db, dpw, dr (None where not wanted); `r` is the residual only when the activation needs it."""
    K = runtime.load_kernels("kernels._fused_norm_act_triton")

    cl = is_channels_last(x)
    x = to_layout(x, cl)
    dy = to_layout(dy, cl)
    r = None if r is None else to_layout(r, cl)
    p = plan(x, groups, cl, split_size)  # the forward's plan: same shape, layout and split
    cg = p.C // groups
    slope = _slope(activation, negative_slope)
    flags = _flags(weight, bias, r, activation, prelu_weight, p.C)
    f32 = dict(device=x.device, dtype=torch.float32)
    pa = runtime.empty(p.N, p.C, p.num_splits, **f32)
    pb = runtime.empty_like(pa)
    pp = runtime.empty_like(pa) if flags["PRELU"] else pa  # never written unless PReLU
    blocks = dict(BLOCK_S=p.block_s, BLOCK_C=p.block_c, num_warps=default_policy().num_warps)
    K._bwd_reduce_kernel[p.grid](x, dy, r, weight, bias, prelu_weight, mean, rstd, pa, pb, pp, p.C, p.S,
                                 cg, groups, p.chunk, p.num_splits, slope, CHANNELS_LAST=cl, **flags,
                                 **blocks)
    c1 = runtime.empty(p.N * groups, **f32)
    c2 = runtime.empty_like(c1)
    K._bwd_combine_kernel[(p.N * groups,)](pa, pb, weight, c1, c2, p.C, cg, groups, p.num_splits,
                                           float(cg * p.S), HAS_W=flags["HAS_W"],
                                           BLOCK=min(runtime.next_pow2(cg * p.num_splits), 1024))
    dx = runtime.empty_like(x)
    write_dr = residual_dtype is not None
    dr = runtime.empty_like(x, dtype=residual_dtype) if write_dr else None
    K._bwd_apply_kernel[p.grid](x, dy, r, weight, bias, prelu_weight, mean, rstd, c1, c2, dx, dr,
                                p.C, p.S, cg, groups, p.chunk, slope, CHANNELS_LAST=cl,
                                WRITE_DR=write_dr, **flags, **blocks)
    dw = pb.sum((0, 2)).to(weight.dtype) if want_dw else None
    db = pa.sum((0, 2)).to(bias.dtype) if want_db else None
    dpw = None
    if want_dpw:
        per_channel = pp.sum((0, 2))
        dpw = per_channel if flags["PRELU_PER_CHANNEL"] else per_channel.sum()
        dpw = dpw.reshape(prelu_weight.shape).to(prelu_weight.dtype)
    return dx, dw, db, dpw, dr


# The fused op as two opaque custom operators (forward, backward) with fake (meta) implementations and
# an autograd formula, so torch.compile puts them in its graph as single nodes (no graph break) and
# never traces the launch planning or the Triton launches. Inside, each runs the Triton kernels where
# they can run (runtime.norm_uses_triton) and the PyTorch reference otherwise. Unwanted gradients come back
# as empty tensors: a custom op cannot return None.


def _like(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty tensor in x's layout as the kernels write it: channels-last stays, all else is contiguous."""
    if is_channels_last(x):
        return torch.empty_like(x, dtype=dtype)
    return x.new_empty(x.shape, dtype=dtype or x.dtype)


def _none(x: Tensor) -> Tensor:
    return x.new_empty(0)


@torch.library.custom_op("segbench::fused_norm_act_fwd", mutates_args=())
def _fwd_op(x: Tensor, weight: Tensor | None, bias: Tensor | None, prelu_weight: Tensor | None,
            residual: Tensor | None, groups: int, activation: str, negative_slope: float, eps: float,
            split_size: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): y as `fused_norm_act`, float32 statistics per (n, group) for backward."""
    if not runtime.norm_uses_triton(x):
        y = fused_norm_act_ref(x, weight, bias, num_groups=groups, activation=activation,
                               negative_slope=negative_slope, prelu_weight=prelu_weight, residual=residual,
                               eps=eps)
        mean, rstd = group_stats_ref(x, groups, eps)
        return y, mean.float(), rstd.float()
    if x.numel() == 0:
        stats = x.new_zeros(x.shape[0] * groups, dtype=torch.float32)
        return _like(x), stats, stats.clone()
    return _triton_forward(x, weight, bias, prelu_weight, residual, groups, activation, negative_slope, eps,
                           split_size)


@_fwd_op.register_fake
def _fwd_fake(x, weight, bias, prelu_weight, residual, groups, activation, negative_slope, eps, split_size):
    stats = x.new_empty(x.shape[0] * groups, dtype=torch.float32)
    return _like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("segbench::fused_norm_act_bwd", mutates_args=())
def _bwd_op(dy: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None, prelu_weight: Tensor | None,
            residual: Tensor | None, mean: Tensor, rstd: Tensor, groups: int, activation: str,
            negative_slope: float, eps: float, split_size: int | None, want_dw: bool, want_db: bool,
            want_dpw: bool, residual_dtype: torch.dtype | None
            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dw, db, dprelu_weight, dresidual); empty where not wanted (dresidual: residual_dtype None).

    `residual` is passed only when the activation's sign depends on it.
    """
    if not runtime.norm_uses_triton(x):
        dx, dw, db, dpw, dr = fused_norm_act_bwd_ref(
            dy, x, weight, bias, prelu_weight, residual, num_groups=groups, activation=activation,
            negative_slope=negative_slope, eps=eps)
        # dz may be dy itself (identity activation): an op's output must not alias an input
        dr = None if residual_dtype is None else dr.to(residual_dtype, copy=True)
    elif x.numel() == 0:  # no elements: zero parameter gradients
        dx, dw, db, dpw = _like(x), *(None if t is None else torch.zeros_like(t)
                                      for t in (weight, bias, prelu_weight))
        dr = None if residual_dtype is None else _like(x, residual_dtype)
    else:
        dx, dw, db, dpw, dr = _triton_backward(dy, x, weight, bias, prelu_weight, residual, mean, rstd,
                                               groups, activation, negative_slope, split_size, want_dw,
                                               want_db, want_dpw, residual_dtype)
    return (dx, dw if want_dw else _none(x), db if want_db else _none(x), dpw if want_dpw else _none(x),
            _none(x) if dr is None else dr)


@_bwd_op.register_fake
def _bwd_fake(dy, x, weight, bias, prelu_weight, residual, mean, rstd, groups, activation, negative_slope,
              eps, split_size, want_dw, want_db, want_dpw, residual_dtype):
    return (_like(x), torch.empty_like(weight) if want_dw else _none(x),
            torch.empty_like(bias) if want_db else _none(x),
            torch.empty_like(prelu_weight) if want_dpw else _none(x),
            _none(x) if residual_dtype is None else _like(x, residual_dtype))


def _fwd_setup_context(ctx, inputs, output):
    x, weight, bias, prelu_weight, residual, groups, activation, negative_slope, eps, split_size = inputs
    _, mean, rstd = output
    # The residual only matters to backward through the activation's sign.
    saved_r = residual if activation != "identity" else None
    ctx.save_for_backward(x, weight, bias, prelu_weight, saved_r, mean, rstd)
    ctx.args = groups, activation, negative_slope, eps, split_size
    ctx.residual_dtype = None if residual is None else residual.dtype
    ctx.mark_non_differentiable(mean, rstd)


def _fwd_backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, prelu_weight, r, mean, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    want_dw, want_db = weight is not None and need[1], bias is not None and need[2]
    want_dpw = prelu_weight is not None and need[3]
    want_dr = ctx.residual_dtype is not None and need[4]
    dx, dw, db, dpw, dr = torch.ops.segbench.fused_norm_act_bwd(
        dy, x, weight, bias, prelu_weight, r, mean, rstd, *ctx.args, want_dw, want_db, want_dpw,
        ctx.residual_dtype if want_dr else None)
    return (dx if need[0] else None, dw if want_dw else None, db if want_db else None,
            dpw if want_dpw else None, dr if want_dr else None, None, None, None, None, None)


_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


def _check(x, weight, bias, num_groups, activation, prelu_weight, residual) -> int:
    if x.dim() < 2:
        raise ValueError(f"fused_norm_act: x must be (N, C, *spatial), got shape {tuple(x.shape)}")
    C = x.shape[1]
    groups = C if num_groups is None else num_groups
    if groups < 1 or C % groups:
        raise ValueError(f"fused_norm_act: num_groups={num_groups} does not divide {C} channels")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (C,):
            raise ValueError(f"fused_norm_act: {name} must have shape ({C},), got {tuple(t.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"fused_norm_act: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if activation == "prelu" and (prelu_weight is None or prelu_weight.numel() not in (1, C)):
        raise ValueError(f"fused_norm_act: prelu needs prelu_weight with 1 or {C} values")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(
            f"fused_norm_act: residual shape {tuple(residual.shape)} differs from x shape {tuple(x.shape)}")
    return groups


def fused_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    num_groups: int | None = None,
    activation: str = "leaky_relu",
    negative_slope: float = 0.01,
    prelu_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    split_size: int | None = None,
) -> torch.Tensor:
    """act(group_norm(x, num_groups) * weight + bias [+ residual]); num_groups=None is instance norm.

    x is (N, C, *spatial), NC(S)-contiguous or channels-last (other strides are copied to contiguous);
    the output has x's dtype and layout. Statistics and reductions run in float32. Differentiable in
    x, weight, bias, residual and prelu_weight (1 or C values). `split_size` overrides the spatial
    positions each program reduces. Without Triton (or CUDA) it runs the PyTorch reference. Under
    torch.compile it is one opaque node (no graph break), forward and backward.
    """
    groups = _check(x, weight, bias, num_groups, activation, prelu_weight, residual)
    # the kernels index the per-channel vectors as W + c: a strided view (w[::2]) must be copied
    weight, bias, prelu_weight = (None if t is None else t.contiguous() for t in (weight, bias, prelu_weight))
    y, _, _ = torch.ops.segbench.fused_norm_act_fwd(
        x, weight, bias, prelu_weight if activation == "prelu" else None, residual, groups, activation,
        float(negative_slope), float(eps), split_size)
    return y
