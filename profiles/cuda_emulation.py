"""What a CUDA device would do, replayed on CPU (fake) tensors: autocast casts and the SDPA kernel.

`profiles.footprint` runs a training step on fake CPU tensors (a CPU-only torch cannot make fake
CUDA tensors that autocast and convolutions accept). Two things then differ from the CUDA step
whose memory it estimates, and both change what autograd saves:

- Autocast. CPU autocast has its own op lists: `layer_norm` and `softmax` of bf16 inputs stay
  bf16 on CPU but run in fp32 on CUDA (so CUDA saves an fp32 copy of every LayerNorm input).
  `CudaLike` re-registers the AutocastCPU kernels with CUDA's policy, taken from PyTorch's
  own lists (aten/src/ATen/autocast_mode.h: AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
  AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_PROMOTE); ops CPU casts and CUDA does not run uncast.
  Ops on both lists with the same policy keep CPU's C++ kernel (it also caches weight casts,
  as CUDA's does).
- Scaled dot-product attention. On CPU, SDPA with a mask or dropout takes the math path (the
  full score matrix is saved); CUDA picks a fused kernel. `CudaLike` routes each call to the
  kernel CUDA's `select_sdp_backend` (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp) picks
  on an sm80+ GPU in PyTorch's default priority order flash > memory-efficient > math:
    flash:     no attn_mask; fp16/bf16; q, k, v head dims equal and <= 256; last-dim stride 1
               (dropout allowed). Saves q, k, v, out and a (B, H, L) fp32 log-sum-exp.
    efficient: fp16/bf16/fp32; head dim divisible by 8 (half) or 4 (fp32), also the storage
               offsets; last-dim stride 1; any additive mask (dropout allowed). Saves q, k, v,
               out, log-sum-exp and the mask, which SDPA first pads to 8-element rows if needed
               (a copy) and expands to (B, H, L, S) (a view); the backward then writes the mask's
               gradient at that expanded shape, before autograd sums it back to the mask's shape.
    math:      everything else (the scores and the softmax are saved).
  cuDNN attention is not modelled: the builds that prefer it (cuDNN > 9.15 on sm90/sm100) reject
  it for dropout that is not a multiple of 1/16, and it saves what flash saves.
- Dropout. On CUDA, out-of-place dropout in training (0 < p < 1) is the fused `native_dropout`,
  which saves a bool mask (1 byte an element); the CPU's composite saves a noise tensor of the
  input's dtype (4 bytes in fp32: MONAI's attention dropout acts on fp32 probabilities).
"""

from __future__ import annotations

import warnings

import torch
from torch.utils._pytree import tree_leaves, tree_map_only

_LOWER = (
    "_convolution.deprecated _convolution conv1d conv2d conv3d conv_tbc conv_transpose1d "
    "conv_transpose2d.input conv_transpose3d.input convolution prelu addmm addmv addr matmul einsum mm "
    "mv linalg_vecdot linear addbmm baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell "
    "_thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell "
    "_scaled_dot_product_flash_attention scaled_dot_product_attention"
).split()
_FP32 = (
    "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow.Tensor_Scalar "
    "pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm group_norm frobenius_norm.dim "
    "nuclear_norm nuclear_norm.dim cosine_similarity poisson_nll_loss cosine_embedding_loss nll_loss "
    "nll_loss2d hinge_embedding_loss kl_div l1_loss smooth_l1_loss huber_loss mse_loss "
    "margin_ranking_loss multilabel_margin_loss soft_margin_loss triplet_margin_loss multi_margin_loss "
    "binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp upsample_nearest1d "
    "_upsample_nearest_exact1d upsample_nearest2d _upsample_nearest_exact2d upsample_nearest3d "
    "_upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa "
    "upsample_trilinear3d upsample_bicubic2d _upsample_bicubic2d_aa"
).split()
_FP32_SET_OPT_DTYPE = (
    "prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm "
    "linalg_matrix_norm linalg_matrix_norm.str_ord sum sum.dim_IntList"
).split()
_PROMOTE = (
    "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add".split()
)

_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _op(name: str) -> torch._ops.OpOverload:
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


def _eligible(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dtype != torch.float64


def _cast_to(dtype: torch.dtype):
    return lambda t: t.to(dtype) if _eligible(t) and t.dtype != dtype else t


def _default_dtype(op: torch._ops.OpOverload, args: tuple, kwargs: dict, dtype: torch.dtype):
    """`op`'s optional `dtype` argument set to `dtype` unless the caller gave one (by position or name)."""
    index = next(i for i, a in enumerate(op._schema.arguments) if a.name == "dtype")
    if index < len(args):
        if args[index] is None:
            args = (*args[:index], dtype, *args[index + 1 :])
        return args, kwargs
    if kwargs.get("dtype") is None:
        kwargs = {**kwargs, "dtype": dtype}
    return args, kwargs


def _kernel(op: torch._ops.OpOverload, policy: str):
    """A Python AutocastCPU kernel applying CUDA's `policy`, then running `op` below autocast.

    "none" (CPU casts the op, CUDA does not): a fallthrough, as CUDA has no autocast kernel for it —
    the ops it calls inside (a conv with padding="same", cross_entropy's log_softmax) stay under
    autocast, which a kernel running the op with autocast excluded would switch off."""
    if policy == "none":
        return torch.library.fallthrough_kernel

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            if policy == "lower":
                args, kwargs = tree_map_only(
                    torch.Tensor, _cast_to(torch.get_autocast_dtype("cpu")), (args, kwargs)
                )
            elif policy == "fp32":
                args, kwargs = tree_map_only(torch.Tensor, _cast_to(torch.float32), (args, kwargs))
            elif policy == "fp32_set_opt_dtype":
                first = args[0] if args else None
                if isinstance(first, torch.Tensor) and _eligible(first):
                    args, kwargs = _default_dtype(op, args, kwargs, torch.float32)
            elif policy == "promote":
                floats = [
                    t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and _eligible(t)
                ]
                if any(t.dtype == torch.float32 for t in floats):  # else all are already the low type
                    args, kwargs = tree_map_only(torch.Tensor, _cast_to(torch.float32), (args, kwargs))
            return op(*args, **kwargs)

    return kernel


def cuda_policy_table() -> dict[str, str]:
    """aten op name -> the policy this module registers on AutocastCPU ("none": run uncast)."""
    cuda = {
        **{n: "lower" for n in _LOWER},
        **{n: "fp32" for n in _FP32},
        **{n: "fp32_set_opt_dtype" for n in _FP32_SET_OPT_DTYPE},
        **{n: "promote" for n in _PROMOTE},
    }
    cpu = {
        r.removeprefix("aten::") for r in torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCPU")
    }
    table = {}
    for name, policy in cuda.items():
        # CPU lists these with the same policy (lower precision; the fp32 losses): keep its kernel
        if name in cpu and policy in ("lower", "fp32"):
            continue
        table[name] = policy
    for name in cpu - set(cuda):
        table[name] = "none"  # CPU casts it (e.g. cat/stack promote, pooling in fp32); CUDA does not
    return table


def sdpa_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> str:
    """The kernel CUDA's select_sdp_backend would run these inputs with (sm80+, default order)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "math"
    head, head_v = q.size(-1), v.size(-1)
    strides_ok = all(t.stride(-1) == 1 for t in (q, k, v))
    if (
        attn_mask is None
        and q.dtype in (torch.float16, torch.bfloat16)
        and head == k.size(-1) == head_v
        and head <= 256
        and strides_ok
        and not (is_causal and q.size(-2) != k.size(-2))
    ):
        return "flash"
    align = 8 if q.dtype in (torch.float16, torch.bfloat16) else 4
    if (
        q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and head == k.size(-1)
        and head % align == 0
        and head_v % align == 0
        and strides_ok
        and all(t.storage_offset() % align == 0 for t in (q, k, v))
    ):
        return "efficient"
    return "math"


def _aligned_mask(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """SDPA's preprocess_mask for the efficient kernel: pad rows to 8 elements if unaligned, expand."""
    aligned = all(mask.stride(i) % 8 == 0 for i in range(mask.dim() - 1)) and mask.stride(-1) == 1
    if not aligned:
        last = mask.size(-1)
        mask = torch.nn.functional.pad(mask, (0, 8 - last % 8))[..., :last]
    return mask.expand(q.size(0), q.size(1), q.size(2), k.size(2))


class CudaLike:
    """Context manager: inside it, CPU autocast, SDPA and dropout allocate as they would on CUDA.

    Process-wide while active (kernels registered with torch.library, removed on exit), so it also
    holds inside backward, where checkpointed blocks are recomputed. `calls` counts the kernels
    chosen; `policies` is the autocast table applied.
    """

    def __init__(self, autocast: bool = True, kernels: bool = True) -> None:
        self.autocast, self.kernels = autocast, kernels
        self.calls: dict[str, int] = {}
        self.policies: dict[str, str] = {}
        self._lib: torch.library.Library | None = None

    def __enter__(self) -> CudaLike:
        self._lib = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
            if self.autocast:
                self.policies = cuda_policy_table()
                for name, policy in self.policies.items():
                    self._lib.impl(name, _kernel(_op(name), policy), "AutocastCPU")
            if self.kernels:
                self._lib.impl("scaled_dot_product_attention", self._sdpa, "CompositeImplicitAutograd")
                self._lib.impl("dropout", self._dropout, "CompositeImplicitAutograd")
        return self

    def __exit__(self, *exc) -> None:
        self._lib._destroy()
        self._lib = None

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _dropout(self, input, p, train):
        """at::dropout: CUDA runs native_dropout (it saves a bool mask) when training with 0 < p < 1;
        the rest as the composite does everywhere."""
        if train and 0 < p < 1 and input.numel() > 0:
            self._count("dropout: fused")
            return torch.ops.aten.native_dropout(input, p, True)[0]
        if not train or p == 0:
            return input
        return input * torch.zeros((), dtype=input.dtype)

    def _sdpa(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
        # Autocast (a key above this one) has already cast q, k, v and the mask, as CUDA's would.
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # convert_boolean_attn_mask
            zero, inf = torch.zeros((), dtype=q.dtype), torch.full((), float("-inf"), dtype=q.dtype)
            attn_mask = torch.where(attn_mask, zero, inf)
        backend = "math" if enable_gqa else sdpa_backend(q, k, v, attn_mask, dropout_p, is_causal)
        self._count(f"sdpa: {backend}")
        if backend == "flash":
            return torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, dropout_p, is_causal, False, scale=scale
            )[0]
        if backend == "efficient":
            needs_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
            mask = None if attn_mask is None else _aligned_mask(attn_mask, q, k)
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, mask, needs_lse, dropout_p, is_causal, scale=scale
            )[0]
        return torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )[0]
