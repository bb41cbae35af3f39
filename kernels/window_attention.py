"""`window_attention`: attention over many small windows sharing one additive bias, as Triton custom ops.

    out = window_attention(q, k, v, bias, dropout_p=0.2, scale=d**-0.5)

q, k, v: (R, H, N, D), any strides (R rows = windows × batch of one Swin window group, N tokens per
window, D the head dim); bias: (H, N, N), broadcast over the rows (relative-position bias + the
group's shift mask), differentiable. Returns (R, H, N, D) — a transposed view of a contiguous
(R, N, H, D) tensor, the layout Swin's projection reads next.

What it is for: the fast SwinUNETR's training attention runs SDPA's memory-efficient kernel, whose
backward writes the bias gradient at full (R, H, N, N) size before autograd sums it over the rows
(0.7 GB per stage-1 block of a 128³ input at feature 24, written then read). Here the rows' sum is
taken inside the backward, per chunk of rows. Whether that beats the efficient kernel on a GPU is
what `python -m kernels.bench_window_attention` measures; nothing uses it by default.

Dropout masks come from Philox in the kernels (`keep_mask` returns them) and differ from torch's
RNG; the kernels need Triton (a CUDA device, or TRITON_INTERPRET=1 for tests): there is no PyTorch
fallback, since the reference cannot draw the same masks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import runtime

# (BLOCK_M, BLOCK_N, num_warps) per kernel: the largest tiles that compile for sm_90 without spilling
# registers at head dim 8-16 with dropout (kernels.codegen_check prints them); BLOCK_N a multiple of 4
# (dropout draws 4 keys per Philox call). Not yet tuned on a GPU.
CONFIGS = {"fwd": (64, 32, 8), "dkdv": (32, 64, 8), "dq": (64, 32, 8), "dbias": (64, 32, 8)}
# dbias programs = tiles × heads × chunks of rows: about this many per SM, so that each SM has several
# programs to hide the loads of its row loop (stage 1 of f24: 66 tiles × 3 heads × 5 chunks on 132 SMs);
# the fp32 partials (chunks × heads × N × N, 9 MB there) are summed on the host.
_DBIAS_PROGRAMS_PER_SM = 8


def _block_d(D: int) -> int:
    return max(16, runtime.next_pow2(D))  # tl.dot needs every dim >= 16


def matmul_tf32() -> bool:
    """Whether PyTorch's float32 CUDA matmuls may use TF32: the `fp32_precision` switch (torch >= 2.9;
    reading the legacy `allow_tf32` after it was set raises), else `allow_tf32`. Off by default."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    return precision == "tf32" if precision is not None else bool(matmul.allow_tf32)


def dot_precision(dtype: torch.dtype) -> str | None:
    """tl.dot's input precision: float32 inputs multiply in IEEE fp32 unless PyTorch's matmuls may
    use TF32 (`matmul_tf32`), as SDPA's would; Triton's own default for them is TF32 on sm_80+,
    which the interpreter never shows (it multiplies in fp32). Otherwise None: the backend's default
    (half-precision inputs are exact either way; AMD backends accept no "tf32" on most chips)."""
    if dtype == torch.float32 and not matmul_tf32():
        return "ieee"
    return None


def _meta(kernel: str, D: int, dropout_p: float, dtype: torch.dtype) -> dict:
    block_m, block_n, warps = CONFIGS[kernel]
    return dict(DROPOUT=dropout_p > 0, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_block_d(D),
                PRECISION=dot_precision(dtype), num_warps=warps)


def _strides(t: Tensor) -> tuple[int, int, int]:
    if t.stride(-1) != 1:
        raise ValueError(f"window_attention: the head dim must be contiguous (strides {t.stride()})")
    return t.stride(0), t.stride(1), t.stride(2)


def _check(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"window_attention: q, k, v must be (R, H, N, D) alike, got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    R, H, N, D = q.shape
    if bias.shape != (H, N, N):
        raise ValueError(f"window_attention: bias must be ({H}, {N}, {N}), got {tuple(bias.shape)}")
    if bias.stride(-1) != 1:
        raise ValueError("window_attention: the bias's last dim must be contiguous")
    if not runtime.use_triton(q):
        raise RuntimeError(f"window_attention needs the Triton kernels: {runtime.available()[1]}")


def _interpreted_bf16(q: Tensor) -> bool:
    """The Triton interpreter's bf16 tl.dot is wrong (triton 3.9: errors ~1e8): the ops run bf16 in
    float32 there (the same dropout masks), inside the ops so that fake tensors (torch.compile, the
    footprint estimate) still see bf16."""
    return q.dtype == torch.bfloat16 and runtime.interpret_mode()


def _launch_args(q, k, v):
    R, H, N, D = q.shape
    return (R, H, N, D, *_strides(q), *_strides(k), *_strides(v))


@torch.library.custom_op("segbench::window_attention_fwd", mutates_args=())
def _fwd_op(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout_p: float, scale: float, seed: Tensor
            ) -> tuple[Tensor, Tensor]:
    """(out, lse): out (R, H, N, D) as a view of (R, N, H, D); lse (R, H, N) float32 for backward."""
    _check(q, k, v, bias)
    if _interpreted_bf16(q):
        out, lse = _fwd_op(q.float(), k.float(), v.float(), bias.float(), dropout_p, scale, seed)
        return out.to(q.dtype), lse
    K = runtime.load_kernels("kernels._window_attention_triton")
    R, H, N, D = q.shape
    out = runtime.empty(R, N, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = runtime.empty(R, H, N, device=q.device, dtype=torch.float32)
    meta = _meta("fwd", D, dropout_p, q.dtype)
    K._wattn_fwd_kernel[(runtime.cdiv(N, meta["BLOCK_M"]) * R * H,)](
        q, k, v, bias, out, lse, *_launch_args(q, k, v), *_strides(out), bias.stride(0), bias.stride(1),
        scale, dropout_p, seed, **meta)
    return out, lse


@_fwd_op.register_fake
def _fwd_fake(q, k, v, bias, dropout_p, scale, seed):
    R, H, N, D = q.shape
    return q.new_empty(R, N, H, D).transpose(1, 2), q.new_empty(R, H, N, dtype=torch.float32)


@torch.library.custom_op("segbench::window_attention_bwd", mutates_args=())
def _bwd_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, out: Tensor, lse: Tensor,
            dropout_p: float, scale: float, seed: Tensor, want_dbias: bool
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dbias): dq/dk/dv contiguous (R, H, N, D); dbias (H, N, N) or empty."""
    if _interpreted_bf16(q):
        grads = _bwd_op(dout.float(), q.float(), k.float(), v.float(), bias.float(), out.float(), lse,
                        dropout_p, scale, seed, want_dbias)
        return (*(g.to(q.dtype) for g in grads[:3]), grads[3].to(bias.dtype))
    K = runtime.load_kernels("kernels._window_attention_triton")
    R, H, N, D = q.shape
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # rowsum(dO ∘ O): one cheap pass
    dq, dk, dv = (runtime.empty(R, H, N, D, device=q.device, dtype=q.dtype) for _ in range(3))
    common = (*_launch_args(q, k, v), *_strides(dout), bias.stride(0), bias.stride(1), scale,
              dropout_p, seed)
    meta = _meta("dkdv", D, dropout_p, q.dtype)
    K._wattn_bwd_dkdv_kernel[(runtime.cdiv(N, meta["BLOCK_N"]) * R * H,)](
        q, k, v, bias, dout, lse, delta, dk, dv, *common, **meta)
    meta = _meta("dq", D, dropout_p, q.dtype)
    K._wattn_bwd_dq_kernel[(runtime.cdiv(N, meta["BLOCK_M"]) * R * H,)](
        q, k, v, bias, dout, lse, delta, dq, *common, **meta)
    dbias = q.new_empty(0)
    if want_dbias:
        meta = _meta("dbias", D, dropout_p, q.dtype)
        tiles = runtime.cdiv(N, meta["BLOCK_M"]) * runtime.cdiv(N, meta["BLOCK_N"])
        chunks = max(1, min(R, _DBIAS_PROGRAMS_PER_SM * runtime.sm_count(q.device) // max(tiles * H, 1)))
        rows_per_chunk = runtime.cdiv(R, chunks)
        chunks = runtime.cdiv(R, rows_per_chunk)
        partial = runtime.empty(chunks, H, N, N, device=q.device, dtype=torch.float32)
        K._wattn_bwd_dbias_kernel[(tiles, H, chunks)](
            q, k, v, bias, dout, lse, delta, partial, *common[:4], rows_per_chunk, *common[4:], **meta)
        dbias = partial.sum(0).to(bias.dtype)
    return dq, dk, dv, dbias


@_bwd_op.register_fake
def _bwd_fake(dout, q, k, v, bias, out, lse, dropout_p, scale, seed, want_dbias):
    R, H, N, D = q.shape
    grads = [q.new_empty(R, H, N, D) for _ in range(3)]
    return (*grads, bias.new_empty(bias.shape) if want_dbias else q.new_empty(0))


def _setup_context(ctx, inputs, output):
    q, k, v, bias, dropout_p, scale, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, out, lse, seed)
    ctx.args = (dropout_p, scale)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, bias, out, lse, seed = ctx.saved_tensors
    want_dbias = ctx.needs_input_grad[3]
    dq, dk, dv, dbias = torch.ops.segbench.window_attention_bwd(dout, q, k, v, bias, out, lse, *ctx.args,
                                                                seed, want_dbias)
    return dq, dk, dv, dbias if want_dbias else None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def window_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout_p: float = 0.0,
                     scale: float | None = None, seed: int | None = None) -> Tensor:
    """softmax(q kᵀ·scale + bias) v with dropout on the attention weights; see the module docstring.

    seed: the dropout masks' Philox seed; None draws it on q's device from torch's generator (a
    tensor: no host sync, a fresh draw per step under torch.compile; torch.manual_seed repeats a run).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if seed is None and dropout_p > 0:
        seed_t = torch.randint(0, 2**30, (1,), device=q.device, dtype=torch.int32)
    else:
        seed_t = torch.full((1,), seed or 0, device=q.device, dtype=torch.int32)
    out, _ = torch.ops.segbench.window_attention_fwd(q, k, v, bias, float(dropout_p), float(scale), seed_t)
    return out


def keep_mask(R: int, H: int, N: int, dropout_p: float, seed: int, device: torch.device) -> Tensor:
    """The (R, H, N, N) bool mask of kept attention weights the kernels draw for (dropout_p, seed)."""
    K = runtime.load_kernels("kernels._window_attention_triton")
    keep = torch.full((R, H, N, N), -1, device=device, dtype=torch.int8)  # -1: never written
    seed_t = torch.full((1,), seed, device=device, dtype=torch.int32)
    block_m, block_n, _ = CONFIGS["fwd"]
    K._wattn_keep_mask_kernel[(runtime.cdiv(N, block_m) * R * H,)](
        keep, H, N, dropout_p, seed_t, BLOCK_M=block_m, BLOCK_N=block_n)
    if (keep < 0).any():
        raise RuntimeError("keep_mask: the kernel left elements unwritten")
    return keep.bool()


def window_attention_ref(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout_p: float = 0.0,
                         scale: float | None = None, keep: Tensor | None = None) -> Tensor:
    """PyTorch reference (scores materialized), with the dropout mask `keep` given."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = torch.softmax((q @ k.transpose(-1, -2)).float() * scale + bias.float(), dim=-1)
    if dropout_p > 0:
        attn = torch.where(keep, attn / (1 - dropout_p), torch.zeros_like(attn))
    return (attn.to(v.dtype) @ v).to(q.dtype)
