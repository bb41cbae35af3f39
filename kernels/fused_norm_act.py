"""`fused_norm_act`: group/instance norm + affine + residual + activation in one Triton pipeline.

Forward reads x twice (statistics, then apply) and writes y once; backward reads x and dy twice
(the two sums, then dx) and writes dx (and d residual). Only the per-(n, group) mean and rstd are
saved, plus the residual when the activation must re-derive its sign. The kernels live in
`_fused_norm_act_triton.py`; this module plans the launches and wires them into autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import runtime
from .reference import ACTIVATIONS, fused_norm_act_ref, is_channels_last, to_layout


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


class _FusedNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, prelu_weight, residual, groups, activation, negative_slope, eps,
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
        slope = _slope(activation, negative_slope)
        K._apply_kernel[p.grid](x, y, r, weight, bias, prelu_weight, mean, rstd, p.C, p.S, cg, groups,
                                p.chunk, slope, CHANNELS_LAST=cl, **flags, **blocks)
        # The residual only matters to backward through the activation's sign.
        saved_r = r if flags["HAS_ACT"] else None
        ctx.save_for_backward(x, weight, bias, prelu_weight, saved_r, mean, rstd)
        ctx.p, ctx.activation, ctx.slope, ctx.has_res = p, activation, slope, residual is not None
        ctx.res_dtype = None if residual is None else residual.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        K = runtime.load_kernels("kernels._fused_norm_act_triton")

        x, weight, bias, prelu_weight, r, mean, rstd = ctx.saved_tensors
        p: Plan = ctx.p
        dy = to_layout(dy, p.channels_last)
        groups, cg = p.G, p.C // p.G
        flags = _flags(weight, bias, r, ctx.activation, prelu_weight, p.C)
        f32 = dict(device=x.device, dtype=torch.float32)
        pa = runtime.empty(p.N, p.C, p.num_splits, **f32)
        pb = runtime.empty_like(pa)
        pp = runtime.empty_like(pa) if flags["PRELU"] else pa  # never written unless PReLU
        blocks = dict(BLOCK_S=p.block_s, BLOCK_C=p.block_c, num_warps=default_policy().num_warps)
        K._bwd_reduce_kernel[p.grid](x, dy, r, weight, bias, prelu_weight, mean, rstd, pa, pb, pp, p.C, p.S,
                                     cg, groups, p.chunk, p.num_splits, ctx.slope,
                                     CHANNELS_LAST=p.channels_last, **flags, **blocks)
        c1 = runtime.empty(p.N * groups, **f32)
        c2 = runtime.empty_like(c1)
        K._bwd_combine_kernel[(p.N * groups,)](pa, pb, weight, c1, c2, p.C, cg, groups, p.num_splits,
                                               float(cg * p.S), HAS_W=flags["HAS_W"],
                                               BLOCK=min(runtime.next_pow2(cg * p.num_splits), 1024))
        dx = runtime.empty_like(x)
        write_dr = ctx.has_res and ctx.needs_input_grad[4]
        dr = runtime.empty_like(x, dtype=ctx.res_dtype) if write_dr else None
        K._bwd_apply_kernel[p.grid](x, dy, r, weight, bias, prelu_weight, mean, rstd, c1, c2, dx, dr,
                                    p.C, p.S, cg, groups, p.chunk, ctx.slope, CHANNELS_LAST=p.channels_last,
                                    WRITE_DR=write_dr, **flags, **blocks)
        dw = pb.sum((0, 2)).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = pa.sum((0, 2)).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        dpw = None
        if flags["PRELU"] and ctx.needs_input_grad[3]:
            per_channel = pp.sum((0, 2))
            dpw = per_channel if flags["PRELU_PER_CHANNEL"] else per_channel.sum()
            dpw = dpw.reshape(prelu_weight.shape).to(prelu_weight.dtype)
        return dx, dw, db, dpw, dr, None, None, None, None, None


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


@runtime.compile_boundary  # a graph break under torch.compile; the kernels run as they do eagerly
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
    positions each program reduces. Without Triton (or CUDA) it runs the PyTorch reference.
    """
    groups = _check(x, weight, bias, num_groups, activation, prelu_weight, residual)
    if not runtime.use_triton(x):
        return fused_norm_act_ref(x, weight, bias, num_groups=num_groups, activation=activation,
                                  negative_slope=negative_slope, prelu_weight=prelu_weight,
                                  residual=residual, eps=eps)
    if x.numel() == 0:
        return torch.empty_like(x)
    return _FusedNormAct.apply(x, weight, bias, prelu_weight if activation == "prelu" else None, residual,
                               groups, activation, negative_slope, eps, split_size)
