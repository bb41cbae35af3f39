"""The fast SwinUNETR with its window attention through kernels.window_attention (Triton, interpreted
on a CPU) computes stock MONAI's function: outputs and every gradient, same weights, dropout off."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import SwinUNETR

from seg.speed import SpeedOptionError, apply_speed_options
from seg.swin_fast import to_fast


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_fast_path_with_triton_attention_matches_stock_monai(triton_backend):
    torch.manual_seed(0)
    # Small enough for the interpreter: 5³ windows (2 tiles each way, padded: 16 tokens a side), a 32³
    # input whose 1³ bottleneck needs a norm that is not per-instance.
    stock = SwinUNETR(in_channels=4, out_channels=3, feature_size=12, window_size=5, num_heads=(2, 2, 2, 2),
                      spatial_dims=3, norm_name=("group", {"num_groups": 1})).to(triton_backend)
    fast = to_fast(copy.deepcopy(stock), fused_norm=False, attention="triton")
    assert {blk.attn.impl for layer in (fast.swinViT.layers1, fast.swinViT.layers2)
            for blk in layer[0].blocks} == {"triton"}
    x = torch.randn(1, 4, 32, 32, 32, device=triton_backend)
    out_stock, out_fast = stock(x), fast(x)
    assert _rel(out_fast, out_stock) < 1e-5
    grad = torch.randn_like(out_stock)
    out_stock.backward(grad)
    out_fast.backward(grad)
    stock_params = dict(stock.named_parameters())
    for name, p in fast.named_parameters():
        assert _rel(p.grad, stock_params[name].grad) < 1e-4, name


def test_triton_attention_is_an_option_of_the_fast_path_only():
    stock = SwinUNETR(in_channels=4, out_channels=3, feature_size=12, spatial_dims=3)
    with pytest.raises(SpeedOptionError, match="option of the fast SwinUNETR path"):
        apply_speed_options(stock, swin_attention="triton")
    with pytest.raises(SpeedOptionError, match="attention 'flash': choose sdpa or triton"):
        apply_speed_options(stock, fast=True, swin_attention="flash")
