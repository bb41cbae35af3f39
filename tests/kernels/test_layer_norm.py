"""layer_norm (Triton; the interpreter on CPU) against float64 F.layer_norm, forward and all gradients."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.reference import layer_norm_ref

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _rel_err(got, ref):
    assert torch.isfinite(got).all(), "non-finite values (an element was never written?)"
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize(
    "shape,dtype,affine",
    [
        ((3, 5, 7, 48), torch.float32, True),  # Swin tokens (b, d, h, w, c), C a multiple of 24
        ((37, 24), torch.bfloat16, True),
        ((2, 9, 96), torch.float16, True),  # C not a power of two
        ((5, 3, 100), torch.float32, False),
        ((4, 768), torch.float32, True),
    ],
    ids=str,
)
def test_matches_float64_reference(shape, dtype, affine, triton_backend, poisoned):
    g = torch.Generator().manual_seed(sum(shape))
    d = shape[-1]
    x = (torch.randn(*shape, generator=g) * 2 + 3).to(dtype).to(triton_backend)
    w = (torch.randn(d, generator=g) * 0.5 + 1).to(triton_backend) if affine else None
    b = torch.randn(d, generator=g).to(triton_backend) if affine else None
    dy = torch.randn(*shape, generator=g).to(dtype).to(triton_backend)
    leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    y = kernels.layer_norm(*(leaves if affine else leaves + [None, None]))
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y_ref = layer_norm_ref(*(ref_leaves if affine else ref_leaves + [None, None]))
    grads_ref = torch.autograd.grad(y_ref, ref_leaves, dy.double())
    assert y.dtype == dtype and y.shape == x.shape
    assert _rel_err(y, y_ref) <= TOL[dtype]
    for name, got, ref in zip("xwb"[: len(leaves)], grads, grads_ref, strict=True):
        assert _rel_err(got, ref) <= TOL[dtype], f"d{name}"


def test_non_contiguous_tokens(triton_backend, poisoned):
    # SwinUNETR normalizes permuted (b, d, h, w, c) views of (b, c, d, h, w) tensors.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 3, 5, 4, generator=g).to(triton_backend).permute(0, 2, 3, 4, 1)
    w, b = torch.randn(24, generator=g).to(triton_backend), torch.randn(24, generator=g).to(triton_backend)
    assert _rel_err(kernels.layer_norm(x, w, b), layer_norm_ref(x.double(), w.double(), b.double())) <= 1e-5
    # strided weight and bias views (w[::2]): the kernels must read channel d, not element d
    w2, b2 = (torch.randn(48, generator=g).to(triton_backend)[::2] for _ in range(2))
    ref = layer_norm_ref(x.double(), w2.double(), b2.double())
    assert _rel_err(kernels.layer_norm(x, w2, b2), ref) <= 1e-5


def test_eps_keeps_constant_and_near_constant_rows_finite(triton_backend):
    """Rows whose variance is 0 or ~1e-6: eps decides their output (NaN or 1.4x off without it)."""
    g = torch.Generator().manual_seed(0)
    d = 48
    rows = [torch.full((d,), 3.0), 3.0 + 1e-3 * torch.randn(d, generator=g), torch.randn(d, generator=g)]
    x = torch.stack(rows).to(triton_backend)
    for eps in (1e-5, 1e-3):
        y = kernels.layer_norm(x, None, None, eps)
        expected = torch.nn.functional.layer_norm(x.double(), (d,), eps=eps)
        assert torch.isfinite(y).all() and (y - expected).abs().max() < 1e-4, eps


def test_float64_runs_the_reference_so_gradcheck_holds(triton_backend):
    # the kernels compute in float32: float64 (gradcheck) takes the reference rather than losing precision
    x = torch.randn(3, 5, dtype=torch.float64, device=triton_backend, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, device=triton_backend, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: kernels.layer_norm(x, w, None), (x, w))
