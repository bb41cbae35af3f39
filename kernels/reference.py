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


# Backward references: the fallback's gradients where Triton cannot run. They are written out (not
# autograd through the forward) because they run inside the opaque custom ops, below autograd.


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def group_stats_ref(x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, group) mean and 1/sqrt(var + eps) of x, flattened to (N * groups,), in the compute dtype."""
    xg = x.to(_compute_dtype(x)).reshape(x.shape[0], groups, -1)
    var, mean = torch.var_mean(xg, dim=-1, correction=0)
    return mean.reshape(-1), torch.rsqrt(var + eps).reshape(-1)


def fused_norm_act_bwd_ref(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    prelu_weight: torch.Tensor | None,
    residual: torch.Tensor | None,
    *,
    num_groups: int,
    activation: str,
    negative_slope: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """(dx, dweight, dbias, dprelu_weight, dresidual) of `fused_norm_act_ref`, the kernels' two-sum formula.

    dx keeps x's layout and dtype, dweight/dbias/dprelu_weight their parameters' dtype (None when the
    parameter is absent); dresidual (= dz) is returned in the compute dtype, in x's layout (it may be dy
    itself).
    """
    cd = _compute_dtype(x)
    N, C = x.shape[:2]
    bshape = (1, C) + (1,) * (x.dim() - 2)  # per-channel values broadcast over (N, C, *spatial)
    dims = (0, *range(2, x.dim()))  # all but the channel dim
    mean, rstd = group_stats_ref(x, num_groups, eps)
    xg = x.to(cd).reshape(N, num_groups, -1)
    xhat = ((xg - mean.view(N, -1, 1)) * rstd.view(N, -1, 1)).reshape(x.shape)
    w = 1.0 if weight is None else weight.to(cd).view(bshape)
    z = xhat * w + (0.0 if bias is None else bias.to(cd).view(bshape))
    if residual is not None:
        z = z + residual.to(cd)
    g = dy.to(cd)
    dpw = None
    if activation != "identity":
        pos = z > 0
        if activation == "prelu":
            a = prelu_weight.to(cd)
            a = a.view(bshape) if a.numel() == C and C > 1 else a.reshape(())
            dpw = torch.where(pos, 0.0, g * z).sum(dims)
            dpw = (dpw if prelu_weight.numel() == C and C > 1 else dpw.sum()).reshape(prelu_weight.shape)
            dpw = dpw.to(prelu_weight.dtype)
        else:
            a = 0.0 if activation == "relu" else negative_slope
        g = torch.where(pos, g, g * a)  # dz
    dw = None if weight is None else (g * xhat).sum(dims).to(weight.dtype)
    db = None if bias is None else g.sum(dims).to(bias.dtype)
    dr = g
    # dx = rstd * (dxhat - mean_group(dxhat) - xhat * mean_group(dxhat * xhat)), dxhat = w dz
    dxhat = (g * w).reshape(N, num_groups, -1)
    xhat_g = xhat.reshape(N, num_groups, -1)
    c1 = dxhat.mean(-1, keepdim=True)
    c2 = (dxhat * xhat_g).mean(-1, keepdim=True)
    dx = (rstd.view(N, -1, 1) * (dxhat - c1 - xhat_g * c2)).reshape(x.shape)
    cl = is_channels_last(x)
    return to_layout(dx.to(x.dtype), cl), dw, db, dpw, to_layout(dr, cl)


def layer_norm_stats_ref(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and 1/sqrt(var + eps) over the last dimension, flattened, in the compute dtype."""
    var, mean = torch.var_mean(x.to(_compute_dtype(x)).reshape(-1, x.shape[-1]), dim=-1, correction=0)
    return mean, torch.rsqrt(var + eps)


def layer_norm_bwd_ref(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dweight, dbias) of `layer_norm_ref`; dx contiguous in x's dtype, None for an absent parameter."""
    cd = _compute_dtype(x)
    D = x.shape[-1]
    mean, rstd = layer_norm_stats_ref(x, eps)
    xhat = (x.to(cd).reshape(-1, D) - mean[:, None]) * rstd[:, None]
    g = dy.to(cd).reshape(-1, D)
    dxhat = g if weight is None else g * weight.to(cd)
    c1 = (dxhat * xhat).mean(-1, keepdim=True)
    c2 = dxhat.mean(-1, keepdim=True)
    dx = ((dxhat - xhat * c1 - c2) * rstd[:, None]).reshape(x.shape).to(x.dtype).contiguous()
    dw = None if weight is None else (g * xhat).sum(0).to(weight.dtype)
    db = None if bias is None else g.sum(0).to(bias.dtype)
    return dx, dw, db
