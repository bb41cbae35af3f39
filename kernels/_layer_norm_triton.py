"""Triton kernels behind `kernels.layer_norm`: LayerNorm over the last dim of (M, D) rows, D up to a few K.

Forward: one program per block of BLOCK_M rows; a whole row fits one tile, so the statistics are an
exact two-pass in registers (mean, then sum of squared deviations), in fp32.
Backward: a fixed number of programs (a few per SM) each walk a strided set of row blocks, write dx,
and keep their share of dweight/dbias in registers; the host sums the per-program partials.
Offsets are int32 (the host checks M * D < 2**31): int64 row offsets cost the backward its 128-bit
vector loads and push it past 255 registers (see kernels.codegen_check for how to look).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .runtime import interpret_mode

INTERPRETED = interpret_mode()  # Triton chose interpreter or compiler for the kernels below just now


@triton.jit
def _ln_fwd_kernel(X, Y, W, B, MEAN, RSTD, M, D, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    r_ok = rows < M
    c_ok = cols < D
    m = r_ok[:, None] & c_ok[None, :]
    off = rows[:, None] * D + cols[None, :]  # int32: the host checks M * D < 2**31
    x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    d = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / D + eps)
    y = d * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=m)
    tl.store(MEAN + rows, mean, mask=r_ok)
    tl.store(RSTD + rows, rstd, mask=r_ok)


@triton.jit
def _ln_bwd_kernel(X, DY, DX, W, MEAN, RSTD, PDW, PDB, M, D, HAS_W: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    c_ok = cols < D
    if HAS_W:
        w = tl.load(W + cols, mask=c_ok, other=0.0).to(tl.float32)
    else:
        w = tl.zeros([BLOCK_D], tl.float32) + 1.0
    dw = tl.zeros([BLOCK_D], tl.float32)
    db = tl.zeros([BLOCK_D], tl.float32)
    for rb in range(pid, tl.cdiv(M, BLOCK_M), num_programs):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        r_ok = rows < M
        m = r_ok[:, None] & c_ok[None, :]
        off = rows[:, None] * D + cols[None, :]
        x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=r_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=r_ok, other=0.0)
        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(g * xhat, axis=1) / D
        c2 = tl.sum(g, axis=1) / D
        dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    tl.store(PDW + pid * D + cols, dw, mask=c_ok)
    tl.store(PDB + pid * D + cols, db, mask=c_ok)
