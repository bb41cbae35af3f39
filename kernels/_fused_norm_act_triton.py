"""Triton kernels behind `kernels.fused_norm_act`: split group/instance norm + affine + residual + activation.

Every (n, group) reduction is split along the spatial axis across `num_splits` programs, so a tensor
with few (n, c) pairs but millions of voxels per pair still fills every SM:

  forward:  _stats   (per (n, c, split): count-weighted mean and M2, fp32, shifted sums)
            _combine (per (n, g): Chan's parallel combine of the partials -> mean, rstd)
            _apply   (y = act((x - mean) * rstd * w + b [+ r]))
  backward: _bwd_reduce  (per (n, c, split): sum dz, sum dz * xhat [, sum dy * z over z <= 0 for PReLU])
            _bwd_combine (per (n, g): c1 = sum_c w_c sum dz / M, c2 = sum_c w_c sum dz xhat / M)
            _bwd_apply   (dx = rstd * (w dz - c1 - xhat c2) [, dr = dz])

A program owns one sample n, a block of BLOCK_C channels and a run of `chunk` spatial positions,
and walks it in [BLOCK_C, BLOCK_S] tiles; reductions run along the last axis (which also keeps the
CPU interpreter's numpy sums pairwise, as accurate as a GPU's tree reductions). The same code serves
both layouts: NC(S) contiguous (offset c * S + s) and channels-last N(S)C (offset s * C + c); the
layout is a constexpr so the contiguous axis is known at compile time and loads vectorize along it.
`chunk` is a multiple of BLOCK_S, so the only partial tile is the last one along S and the mask is
`s < S` (S's divisibility by 16 is specialized by Triton, which keeps masked loads vectorized).

The apply passes walk the programs in reverse order: the last chunks the reduce pass read are the
ones most likely to still sit in L2.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .runtime import interpret_mode

INTERPRETED = interpret_mode()  # Triton chose interpreter or compiler for the kernels below just now


@triton.jit
def _tile_offsets(s, c, C, S, CHANNELS_LAST: tl.constexpr):
    # Offsets (within one sample) of the [BLOCK_C, BLOCK_S] tile at channels c, spatial positions s.
    if CHANNELS_LAST:
        off = c[:, None] + s[None, :] * C
    else:
        off = c[:, None] * S + s[None, :]
    return off


@triton.jit
def _channel_params(W, B, PW, MEAN, RSTD, n, c, c_ok, G, Cg, slope, BLOCK_C: tl.constexpr,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, PRELU: tl.constexpr,
                    PRELU_PER_CHANNEL: tl.constexpr):
    # Per-channel statistics (of the channel's group), affine and activation slope, all fp32.
    g = c // Cg
    mean = tl.load(MEAN + n * G + g, mask=c_ok, other=0.0)
    rstd = tl.load(RSTD + n * G + g, mask=c_ok, other=0.0)
    if HAS_W:
        w = tl.load(W + c, mask=c_ok, other=0.0).to(tl.float32)
    else:
        w = tl.zeros([BLOCK_C], tl.float32) + 1.0
    if HAS_B:
        b = tl.load(B + c, mask=c_ok, other=0.0).to(tl.float32)
    else:
        b = tl.zeros([BLOCK_C], tl.float32)
    if PRELU:
        if PRELU_PER_CHANNEL:
            a = tl.load(PW + c, mask=c_ok, other=0.0).to(tl.float32)
        else:
            a = tl.load(PW + c * 0).to(tl.float32)
    else:
        a = tl.zeros([BLOCK_C], tl.float32) + slope
    return mean, rstd, w, b, a


@triton.jit
def _stats_kernel(X, PMEAN, PM2, C, S, chunk, num_splits,
                  CHANNELS_LAST: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    sp = tl.program_id(0)
    cb = tl.program_id(1)
    n = tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    x_base = X + n.to(tl.int64) * C * S
    s_begin = sp * chunk
    s_end = tl.minimum(s_begin + chunk, S)

    # Shifted sums: subtracting the first tile's per-channel mean keeps sum((x-K)^2) free of the
    # cancellation that E[x^2] - E[x]^2 suffers when |mean| >> std.
    s = s_begin + tl.arange(0, BLOCK_S)
    m = c_ok[:, None] & (s < S)[None, :]
    x = tl.load(x_base + _tile_offsets(s, c, C, S, CHANNELS_LAST), mask=m, other=0.0).to(tl.float32)
    shift = tl.sum(x, axis=1) / tl.minimum(S - s_begin, BLOCK_S).to(tl.float32)

    acc1 = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    acc2 = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        m = c_ok[:, None] & (s < S)[None, :]
        x = tl.load(x_base + _tile_offsets(s, c, C, S, CHANNELS_LAST), mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, x - shift[:, None], 0.0)
        acc1 += d
        acc2 += d * d
    cnt = (s_end - s_begin).to(tl.float32)
    s1 = tl.sum(acc1, axis=1)
    s2 = tl.sum(acc2, axis=1)
    out = (n * C + c) * num_splits + sp
    tl.store(PMEAN + out, shift + s1 / cnt, mask=c_ok)
    tl.store(PM2 + out, tl.maximum(s2 - s1 * s1 / cnt, 0.0), mask=c_ok)


@triton.jit
def _combine_kernel(PMEAN, PM2, MEAN, RSTD, C, S, Cg, G, chunk, num_splits, group_count, eps,
                    BLOCK: tl.constexpr):
    # Chan et al.: mean = sum n_i mean_i / n;  M2 = sum M2_i + sum n_i (mean_i - mean)^2.
    # The means are summed relative to the first one, so |mean| >> std loses no digits.
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    base = (n * C + g * Cg) * num_splits
    L = Cg * num_splits
    ref = tl.load(PMEAN + base)
    acc = tl.zeros([BLOCK], tl.float32)
    for j0 in range(0, L, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        ok = j < L
        cnt = tl.minimum(chunk, S - (j % num_splits) * chunk).to(tl.float32)
        pm = tl.load(PMEAN + base + j, mask=ok, other=0.0)
        acc += tl.where(ok, cnt * (pm - ref), 0.0)
    mean = ref + tl.sum(acc, axis=0) / group_count
    acc = tl.zeros([BLOCK], tl.float32)
    for j0 in range(0, L, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        ok = j < L
        cnt = tl.minimum(chunk, S - (j % num_splits) * chunk).to(tl.float32)
        pm = tl.load(PMEAN + base + j, mask=ok, other=0.0)
        pm2 = tl.load(PM2 + base + j, mask=ok, other=0.0)
        d = pm - mean
        acc += tl.where(ok, pm2 + cnt * d * d, 0.0)
    var = tl.maximum(tl.sum(acc, axis=0) / group_count, 0.0)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _apply_kernel(X, Y, R, W, B, PW, MEAN, RSTD, C, S, Cg, G, chunk, slope,
                  CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                  HAS_RES: tl.constexpr, HAS_ACT: tl.constexpr, PRELU: tl.constexpr,
                  PRELU_PER_CHANNEL: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    sp = tl.num_programs(0) - 1 - tl.program_id(0)
    cb = tl.num_programs(1) - 1 - tl.program_id(1)
    n = tl.num_programs(2) - 1 - tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    mean, rstd, w, b, a = _channel_params(W, B, PW, MEAN, RSTD, n, c, c_ok, G, Cg, slope, BLOCK_C,
                                          HAS_W, HAS_B, PRELU, PRELU_PER_CHANNEL)
    # (x - mean) * scale + b rather than x * scale + shift: the folded form cancels when |mean| >> std.
    scale = rstd * w
    # 64-bit sample base on the pointers, 32-bit offsets within the sample (cheaper per element).
    sample = n.to(tl.int64) * C * S
    X += sample
    Y += sample
    if HAS_RES:
        R += sample
    s_begin = sp * chunk
    s_end = tl.minimum(s_begin + chunk, S)
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        m = c_ok[:, None] & (s < S)[None, :]
        off = _tile_offsets(s, c, C, S, CHANNELS_LAST)
        x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        z = (x - mean[:, None]) * scale[:, None] + b[:, None]
        if HAS_RES:
            z += tl.load(R + off, mask=m, other=0.0).to(tl.float32)
        if HAS_ACT:
            z = tl.where(z > 0, z, z * a[:, None])
        tl.store(Y + off, z.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _bwd_reduce_kernel(X, DY, R, W, B, PW, MEAN, RSTD, PA, PB, PP, C, S, Cg, G, chunk, num_splits, slope,
                       CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       HAS_RES: tl.constexpr, HAS_ACT: tl.constexpr, PRELU: tl.constexpr,
                       PRELU_PER_CHANNEL: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    sp = tl.program_id(0)
    cb = tl.program_id(1)
    n = tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    mean, rstd, w, b, a = _channel_params(W, B, PW, MEAN, RSTD, n, c, c_ok, G, Cg, slope, BLOCK_C,
                                          HAS_W, HAS_B, PRELU, PRELU_PER_CHANNEL)
    sample = n.to(tl.int64) * C * S
    X += sample
    DY += sample
    if HAS_RES:
        R += sample
    s_begin = sp * chunk
    s_end = tl.minimum(s_begin + chunk, S)
    acc_a = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    acc_b = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    acc_p = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        m = c_ok[:, None] & (s < S)[None, :]
        off = _tile_offsets(s, c, C, S, CHANNELS_LAST)
        x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        # Masked lanes load dy = 0, so they add nothing to any of the sums below.
        dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
        xhat = (x - mean[:, None]) * rstd[:, None]
        if HAS_ACT:
            z = xhat * w[:, None] + b[:, None]
            if HAS_RES:
                z += tl.load(R + off, mask=m, other=0.0).to(tl.float32)
            pos = z > 0
            dz = tl.where(pos, dy, dy * a[:, None])
            if PRELU:
                acc_p += tl.where(pos, 0.0, dy * z)
        else:
            dz = dy
        acc_a += dz
        acc_b += dz * xhat
    out = (n * C + c) * num_splits + sp
    tl.store(PA + out, tl.sum(acc_a, axis=1), mask=c_ok)
    tl.store(PB + out, tl.sum(acc_b, axis=1), mask=c_ok)
    if PRELU:
        tl.store(PP + out, tl.sum(acc_p, axis=1), mask=c_ok)


@triton.jit
def _bwd_combine_kernel(PA, PB, W, C1, C2, C, Cg, G, num_splits, group_count,
                        HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    base = (n * C + g * Cg) * num_splits
    L = Cg * num_splits
    acc_a = tl.zeros([BLOCK], tl.float32)
    acc_b = tl.zeros([BLOCK], tl.float32)
    for j0 in range(0, L, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        ok = j < L
        pa = tl.load(PA + base + j, mask=ok, other=0.0)
        pb = tl.load(PB + base + j, mask=ok, other=0.0)
        if HAS_W:
            w = tl.load(W + g * Cg + j // num_splits, mask=ok, other=0.0).to(tl.float32)
            pa = pa * w
            pb = pb * w
        acc_a += pa
        acc_b += pb
    tl.store(C1 + pid, tl.sum(acc_a, axis=0) / group_count)
    tl.store(C2 + pid, tl.sum(acc_b, axis=0) / group_count)


@triton.jit
def _bwd_apply_kernel(X, DY, R, W, B, PW, MEAN, RSTD, C1, C2, DX, DR, C, S, Cg, G, chunk, slope,
                      CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                      HAS_RES: tl.constexpr, HAS_ACT: tl.constexpr, PRELU: tl.constexpr,
                      PRELU_PER_CHANNEL: tl.constexpr, WRITE_DR: tl.constexpr,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    sp = tl.num_programs(0) - 1 - tl.program_id(0)
    cb = tl.num_programs(1) - 1 - tl.program_id(1)
    n = tl.num_programs(2) - 1 - tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    mean, rstd, w, b, a = _channel_params(W, B, PW, MEAN, RSTD, n, c, c_ok, G, Cg, slope, BLOCK_C,
                                          HAS_W, HAS_B, PRELU, PRELU_PER_CHANNEL)
    g = c // Cg
    c1 = tl.load(C1 + n * G + g, mask=c_ok, other=0.0)
    c2 = tl.load(C2 + n * G + g, mask=c_ok, other=0.0)
    # dx = rstd * (w dz - c1 - xhat c2) with xhat = (x - mean) rstd = k_dz dz - k_x (x - mean) - k_0.
    k_dz = rstd * w
    k_x = rstd * rstd * c2
    k_0 = rstd * c1
    sample = n.to(tl.int64) * C * S
    X += sample
    DY += sample
    DX += sample
    if HAS_RES:
        R += sample
    if WRITE_DR:
        DR += sample
    s_begin = sp * chunk
    s_end = tl.minimum(s_begin + chunk, S)
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        m = c_ok[:, None] & (s < S)[None, :]
        off = _tile_offsets(s, c, C, S, CHANNELS_LAST)
        x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
        if HAS_ACT:
            z = (x - mean[:, None]) * rstd[:, None] * w[:, None] + b[:, None]
            if HAS_RES:
                z += tl.load(R + off, mask=m, other=0.0).to(tl.float32)
            dz = tl.where(z > 0, dy, dy * a[:, None])
        else:
            dz = dy
        dx = dz * k_dz[:, None] - (x - mean[:, None]) * k_x[:, None] - k_0[:, None]
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)
        if WRITE_DR:
            tl.store(DR + off, dz.to(DR.dtype.element_ty), mask=m)
