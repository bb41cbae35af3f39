"""PyTorch references for the fused kernels: the fallback where Triton cannot run, and the test oracle.

Low-precision inputs are computed in float32 and cast back, as the kernels do; float64 inputs stay
float64 (the tests' oracle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("identity", "relu", "leaky_relu", "prelu")


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a dense channels-last tensor (N, *spatial, C in memory) that is not also contiguous."""
    if x.dim() < 3 or x.is_contiguous():
        return False
    perm = (0, *range(2, x.dim()), 1)
    return x.permute(perm).is_contiguous()


def to_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`t` in NC(S)-contiguous or channels-last memory order; no copy when it already is."""
    if not channels_last:
        return t.contiguous()
    if is_channels_last(t):
        return t
    perm = (0, *range(2, t.dim()), 1)
    inverse = (0, t.dim() - 1, *range(1, t.dim() - 1))
    return t.permute(perm).contiguous().permute(inverse)


def fused_norm_act_ref(
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
) -> torch.Tensor:
    """act(group_norm(x) * weight + bias [+ residual]) in plain PyTorch; output in x's dtype and layout."""
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    groups = x.shape[1] if num_groups is None else num_groups
    w = None if weight is None else weight.to(cd)
    b = None if bias is None else bias.to(cd)
    y = F.group_norm(x.to(cd), groups, w, b, eps)
    if residual is not None:
        y = y + residual.to(cd)
    if activation == "relu":
        y = F.relu(y)
    elif activation == "leaky_relu":
        y = F.leaky_relu(y, negative_slope)
    elif activation == "prelu":
        y = F.prelu(y, prelu_weight.to(cd))
    elif activation != "identity":
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return to_layout(y.to(x.dtype), is_channels_last(x))


def layer_norm_ref(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dimension, computed in float32 (float64 stays float64), cast back."""
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = None if weight is None else weight.to(cd)
    b = None if bias is None else bias.to(cd)
    return F.layer_norm(x.to(cd), (x.shape[-1],), w, b, eps).to(x.dtype)
