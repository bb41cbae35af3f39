"""Triton kernels behind `kernels.window_attention`: softmax(q kᵀ·scale + bias) v over many small windows
that share one additive bias (Swin's relative-position bias + shift mask), with attention dropout.

Shapes: q, k, v, o are (R, H, N, D) with any strides (R = windows × batch rows of one window group, N
tokens per window, e.g. 343, D the head dim, e.g. 8), bias is (H, N, N). One program per (query block,
row·head) in forward, FlashAttention-2 style (online softmax, scores never leave registers); LSE is
kept per query for backward. D is padded to BLOCK_D ≥ 16 (tl.dot's minimum) by masked loads.

Dropout: Philox keyed by seed + r·H + h, one call per 4 keys of a query row (tl.randint4x: a quarter
of tl.rand's integer work, which is most of what dropout costs here), recomputed in backward, so no
mask is stored; `_wattn_keep_mask_kernel` writes it out for tests. Tiles start at multiples of 4 keys.

Backward: dK/dV per (key block, row·head) and dQ per (query block, row·head) recompute the scores;
the bias gradient Σ_r dS[r] — what the memory-efficient SDPA kernel writes at full (R, H, N, N) size
and then reduces — is accumulated over a chunk of rows in registers per (query block, key block,
head, chunk) and written once per chunk (fp32 partials, summed on the host).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .runtime import interpret_mode

INTERPRETED = interpret_mode()  # Triton chose interpreter or compiler for the kernels below just now


@triton.jit
def _keep(seed, rh, offs_m, start, N, p_drop, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Kept attention weights of the [BLOCK_M, BLOCK_N] tile whose keys begin at `start` (4 | start):
    Philox counter m·⌈N/4⌉ + n//4, its 4 outputs spread over keys 4j, 4j+2, 4j+1, 4j+3."""
    offs_j = start // 4 + tl.arange(0, BLOCK_N // 4)
    r0, r1, r2, r3 = tl.randint4x(seed + rh, offs_m[:, None] * ((N + 3) // 4) + offs_j[None, :])
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK_M, BLOCK_N))
    return tl.random.uint_to_uniform_float(r) >= p_drop


@triton.jit
def _scores(q, K, B, r, h, offs_m, offs_n, start, offs_d, N, D, skr, skh, skn, sbh, sbm, scale, seed, H,
            p_drop, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            PRECISION: tl.constexpr):
    """(masked scores s, keep mask) of a [BLOCK_M, BLOCK_N] tile; s = -inf outside the N×N window."""
    n_ok = offs_n < N
    kt = tl.load(K + r * skr + h * skh + offs_n[None, :] * skn + offs_d[:, None],
                 mask=n_ok[None, :] & (offs_d[:, None] < D), other=0.0)
    s = tl.dot(q, kt, input_precision=PRECISION) * scale
    m_ok = offs_m < N
    bias = tl.load(B + h * sbh + offs_m[:, None] * sbm + offs_n[None, :],
                   mask=m_ok[:, None] & n_ok[None, :], other=0.0)
    s = tl.where(n_ok[None, :], s + bias.to(tl.float32), float("-inf"))
    if DROPOUT:
        keep = _keep(seed, r * H + h, offs_m, start, N, p_drop, BLOCK_M, BLOCK_N)
    else:
        keep = n_ok[None, :]
    return s, keep


@triton.jit
def _block_row_head(N, H, BLOCK: tl.constexpr):
    """(token block, r, h, r·H + h) of the program. One grid axis enumerates (row·head, block), blocks
    fastest (a row·head's blocks share its K and V in L2): axis 1 would cap rows × heads at 65535.
    r is int64: r × a row's stride (3C·N, q/k/v being views of the packed qkv) passes 2³¹ at large
    batches (192³ windows, feature 48, batch 16)."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(N, BLOCK)
    rh = pid // blocks
    return pid % blocks, (rh // H).to(tl.int64), rh % H, rh


@triton.jit
def _wattn_fwd_kernel(Q, K, V, B, O, LSE, R, H, N, D,
                sqr, sqh, sqn, skr, skh, skn, svr, svh, svn, sor, soh, son, sbh, sbm,
                scale, p_drop, SEED, DROPOUT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr):
    seed = tl.load(SEED)  # a device tensor: drawn per call without a host sync, also when compiled
    mb, r, h, rh = _block_row_head(N, H, BLOCK_M)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    d_ok = offs_d < D
    q = tl.load(Q + r * sqr + h * sqh + offs_m[:, None] * sqn + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s, keep = _scores(q, K, B, r, h, offs_m, offs_n, start, offs_d, N, D, skr, skh, skn, sbh, sbm, scale,
                          seed, H, p_drop, DROPOUT, BLOCK_M, BLOCK_N, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row whose keys so far are all masked (-inf bias) has m_new = -inf: exp(-inf - -inf) would
        # be NaN; shifting by 0 instead keeps its p and alpha at 0 until a finite score arrives
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_use)
        p = tl.exp(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            p = tl.where(keep, p / (1.0 - p_drop), 0.0)
        v = tl.load(V + r * svr + h * svh + offs_n[:, None] * svn + offs_d[None, :],
                    mask=(offs_n[:, None] < N) & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    # a row with every key masked has l = 0: its output is 0 (as SDPA's) and its log-sum-exp +inf, so
    # the backward's exp(s - lse) is 0 there too, not exp(-inf + inf) = NaN
    empty = l_i == 0.0
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(O + r * sor + h * soh + offs_m[:, None] * son + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + rh * N + offs_m, tl.where(empty, float("inf"), m_i + tl.log(l_i)), mask=m_ok)


@triton.jit
def _ds_tile(q, do, lse, delta, K, V, B, r, h, offs_m, offs_n, start, offs_d, N, D, skr, skh, skn, svr, svh,
             svn, sbh, sbm, scale, seed, H, p_drop, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """(p with dropout applied, dS) of one tile: dS = P ∘ (dP − delta), the softmax input's gradient."""
    s, keep = _scores(q, K, B, r, h, offs_m, offs_n, start, offs_d, N, D, skr, skh, skn, sbh, sbm, scale,
                      seed, H, p_drop, DROPOUT, BLOCK_M, BLOCK_N, PRECISION)
    p = tl.exp(s - lse[:, None])
    p = tl.where((offs_m < N)[:, None], p, 0.0)
    vt = tl.load(V + r * svr + h * svh + offs_n[None, :] * svn + offs_d[:, None],
                 mask=(offs_n[None, :] < N) & (offs_d[:, None] < D), other=0.0)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    if DROPOUT:
        dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
        p_used = tl.where(keep, p / (1.0 - p_drop), 0.0)
    else:
        p_used = p
    return p_used, p * (dp - delta[:, None])


@triton.jit
def _load_rows(Q, DO, LSE, DELTA, r, h, rh, offs_m, offs_d, N, D, sqr, sqh, sqn, sdr, sdh, sdn):
    ok = (offs_m < N)[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + r * sqr + h * sqh + offs_m[:, None] * sqn + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + r * sdr + h * sdh + offs_m[:, None] * sdn + offs_d[None, :], mask=ok, other=0.0)
    lse = tl.load(LSE + rh * N + offs_m, mask=offs_m < N, other=0.0)
    delta = tl.load(DELTA + rh * N + offs_m, mask=offs_m < N, other=0.0)
    return q, do, lse, delta


@triton.jit
def _wattn_bwd_dkdv_kernel(Q, K, V, B, DO, LSE, DELTA, DK, DV, R, H, N, D,
                     sqr, sqh, sqn, skr, skh, skn, svr, svh, svn, sdr, sdh, sdn, sbh, sbm,
                     scale, p_drop, SEED, DROPOUT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr):
    seed = tl.load(SEED)  # a device tensor: drawn per call without a host sync, also when compiled
    nb, r, h, rh = _block_row_head(N, H, BLOCK_N)
    start = nb * BLOCK_N
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for m_start in range(0, N, BLOCK_M):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        q, do, lse, delta = _load_rows(Q, DO, LSE, DELTA, r, h, rh, offs_m, offs_d, N, D, sqr, sqh, sqn,
                                       sdr, sdh, sdn)
        p_used, ds = _ds_tile(q, do, lse, delta, K, V, B, r, h, offs_m, offs_n, start, offs_d, N, D, skr, skh,
                              skn, svr, svh, svn, sbh, sbm, scale, seed, H, p_drop, DROPOUT, BLOCK_M, BLOCK_N,
                              PRECISION)
        dv += tl.dot(tl.trans(p_used.to(do.dtype)), do, input_precision=PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    ok = (offs_n < N)[:, None] & (offs_d < D)[None, :]
    out = rh * N * D + offs_n[:, None] * D + offs_d[None, :]  # dK, dV: contiguous (R, H, N, D)
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=ok)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _wattn_bwd_dq_kernel(Q, K, V, B, DO, LSE, DELTA, DQ, R, H, N, D,
                   sqr, sqh, sqn, skr, skh, skn, svr, svh, svn, sdr, sdh, sdn, sbh, sbm,
                   scale, p_drop, SEED, DROPOUT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr):
    seed = tl.load(SEED)  # a device tensor: drawn per call without a host sync, also when compiled
    mb, r, h, rh = _block_row_head(N, H, BLOCK_M)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q, do, lse, delta = _load_rows(Q, DO, LSE, DELTA, r, h, rh, offs_m, offs_d, N, D, sqr, sqh, sqn,
                                   sdr, sdh, sdn)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        _, ds = _ds_tile(q, do, lse, delta, K, V, B, r, h, offs_m, offs_n, start, offs_d, N, D, skr, skh, skn,
                         svr, svh, svn, sbh, sbm, scale, seed, H, p_drop, DROPOUT, BLOCK_M, BLOCK_N,
                         PRECISION)
        k = tl.load(K + r * skr + h * skh + offs_n[:, None] * skn + offs_d[None, :],
                    mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    out = rh * N * D + offs_m[:, None] * D + offs_d[None, :]
    ok = (offs_m < N)[:, None] & (offs_d < D)[None, :]
    tl.store(DQ + out, (dq * scale).to(DQ.dtype.element_ty), mask=ok)


@triton.jit
def _wattn_bwd_dbias_kernel(Q, K, V, B, DO, LSE, DELTA, PDB, R, H, N, D, rows_per_chunk,
                      sqr, sqh, sqn, skr, skh, skn, svr, svh, svn, sdr, sdh, sdn, sbh, sbm,
                      scale, p_drop, SEED, DROPOUT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr):
    seed = tl.load(SEED)  # a device tensor: drawn per call without a host sync, also when compiled
    tiles_n = tl.cdiv(N, BLOCK_N)
    mb = tl.program_id(0) // tiles_n
    nb = tl.program_id(0) % tiles_n
    h = tl.program_id(1)
    chunk = tl.program_id(2)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    start = nb * BLOCK_N
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for r in range(chunk * rows_per_chunk, tl.minimum(chunk * rows_per_chunk + rows_per_chunk, R)):
        rh = r * H + h
        r64 = tl.cast(r, tl.int64)  # address arithmetic: see _block_row_head
        q, do, lse, delta = _load_rows(Q, DO, LSE, DELTA, r64, h, rh, offs_m, offs_d, N, D, sqr, sqh, sqn,
                                       sdr, sdh, sdn)
        _, ds = _ds_tile(q, do, lse, delta, K, V, B, r64, h, offs_m, offs_n, start, offs_d, N, D, skr, skh,
                         skn, svr, svh, svn, sbh, sbm, scale, seed, H, p_drop, DROPOUT, BLOCK_M, BLOCK_N,
                         PRECISION)
        acc += ds
    ok = (offs_m < N)[:, None] & (offs_n < N)[None, :]
    tl.store(PDB + (chunk * H + h) * N * N + offs_m[:, None] * N + offs_n[None, :], acc, mask=ok)


@triton.jit
def _wattn_keep_mask_kernel(KEEP, H, N, p_drop, SEED, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """keep[r, h, m, n] as the attention kernels draw it (tests compare against a reference with it)."""
    seed = tl.load(SEED)
    mb, _, _, rh = _block_row_head(N, H, BLOCK_M)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        keep = _keep(seed, rh, offs_m, start, N, p_drop, BLOCK_M, BLOCK_N)
        tl.store(KEEP + rh * N * N + offs_m[:, None] * N + offs_n[None, :], keep.to(tl.int8),
                 mask=(offs_m < N)[:, None] & (offs_n < N)[None, :])
