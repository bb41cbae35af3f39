"""Shared by the fast SwinUNETR tests: MONAI / fast pairs with the same non-trivial weights."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets import swin_unetr as monai_swin

from seg.swin_fast import to_fast
from seg.swin_fast.convert import fast_layer


@pytest.fixture(autouse=True)
def _monai_rearrange(monkeypatch):
    """MONAI's SwinUNETR permutes with einops; without einops, an exact permute stands in for it."""
    if importlib.util.find_spec("einops") is None:

        def rearrange(x, pattern):
            src, dst = (side.split() for side in pattern.split("->"))
            return x.permute([src.index(axis) for axis in dst])

        monkeypatch.setattr(monai_swin, "rearrange", rearrange)


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (MONAI zero-initializes the relative-position tables' spread)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _run(model, x, loss_weights=None):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = model(x)
    weights = loss_weights if loss_weights is not None else torch.ones_like(y)
    (y * weights).sum().backward()
    return y.detach(), x.grad, [p.grad for p in model.parameters()]


def _layer_pair():
    torch.manual_seed(0)
    ref = _perturbed(
        monai_swin.BasicLayer(dim=12, depth=2, num_heads=3, window_size=(7, 7, 7), drop_path=[0, 0])
    )
    return ref, fast_layer(copy.deepcopy(ref))


def _pair(dtype=torch.float64, **options):
    torch.manual_seed(0)
    ref = _perturbed(SwinUNETR(in_channels=4, out_channels=4, **options)).to(dtype).train()
    fast = to_fast(copy.deepcopy(ref), fused_norm=False)
    return ref, fast
