"""fused_norm_act (Triton; the interpreter on CPU) against a float64 PyTorch reference, forward and all grads.

Each case draws a fresh random shape (odd or non-power-of-two channels and spatial sizes) and fresh
inputs from its own seed. Buffers are NaN-poisoned, so an element no kernel writes fails the case.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

import kernels
from kernels.reference import fused_norm_act_ref, is_channels_last, to_layout

fna_module = importlib.import_module("kernels.fused_norm_act")

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@dataclasses.dataclass(frozen=True)
class Case:
    seed: int
    dtype: torch.dtype
    channels_last: bool
    activation: str
    group_norm: bool  # False: instance norm (num_groups=None)
    residual: str | None  # None, "same" (x's dtype) or "fp32"
    batch: int
    split_size: int | None  # small: several programs per (n, c); None: the automatic split
    affine: bool = True
    prelu_per_channel: bool = False

    def __str__(self):
        layout = "cl" if self.channels_last else "nc"
        norm = "gn" if self.group_norm else "in"
        return (f"s{self.seed}-{str(self.dtype)[6:]}-{layout}-{self.activation}-{norm}-res{self.residual}"
                f"-b{self.batch}-split{self.split_size}{'' if self.affine else '-noaffine'}"
                f"{'-pc' if self.prelu_per_channel else ''}")


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
CASES = [
    Case(1, F32, False, "leaky_relu", False, None, 1, 24),
    Case(2, F32, True, "leaky_relu", False, None, 3, 24),
    Case(3, F32, False, "prelu", True, "same", 3, 40),
    Case(4, F32, True, "prelu", True, "same", 1, 17, prelu_per_channel=True),
    Case(5, F32, True, "relu", False, "same", 1, None, affine=False),
    Case(6, F32, False, "identity", True, None, 3, None),
    Case(7, BF16, False, "leaky_relu", False, "same", 1, 32),
    Case(8, BF16, True, "prelu", False, None, 3, 32),
    Case(9, BF16, True, "leaky_relu", True, "fp32", 1, 20),
    Case(10, F16, False, "relu", True, None, 3, 16),
    Case(11, F16, True, "identity", False, "same", 1, None, affine=False),
    Case(12, F16, False, "prelu", False, "same", 1, 30, prelu_per_channel=True),
]


def _inputs(case: Case, device):
    g = torch.Generator().manual_seed(case.seed)
    groups = int(torch.randint(2, 4, (1,), generator=g)) if case.group_norm else None
    per_group = int(torch.randint(1, 4, (1,), generator=g))
    channels = (groups or 1) * per_group if case.group_norm else int(torch.randint(3, 10, (1,), generator=g))
    spatial = [int(v) for v in torch.randint(3, 10, (3,), generator=g)]
    shape = (case.batch, channels, *spatial)

    def rand(*s, scale=1.0, offset=0.0):
        return (torch.randn(*s, generator=g) * scale + offset).to(device)

    x = to_layout(rand(*shape, scale=2.0, offset=0.5).to(case.dtype), case.channels_last)
    param_dtype = F16 if case.dtype == F16 else F32  # fp16 cases: parameters in fp16 too
    weight = rand(channels, scale=0.5, offset=1.0).to(param_dtype) if case.affine else None
    bias = rand(channels, scale=0.5).to(param_dtype) if case.affine else None
    prelu = rand(channels if case.prelu_per_channel else 1, scale=0.1, offset=0.2)
    residual = None
    if case.residual:
        r_dtype = case.dtype if case.residual == "same" else F32
        residual = to_layout(rand(*shape).to(r_dtype), case.channels_last)
    dy = to_layout(rand(*shape).to(case.dtype), case.channels_last)
    return dict(x=x, weight=weight, bias=bias, prelu_weight=prelu, residual=residual), groups, dy


def _grads(fn, tensors: dict, dy):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in tensors.items() if v is not None}
    y = fn(**{**tensors, **leaves})
    grads = torch.autograd.grad(y, list(leaves.values()), dy, allow_unused=True)
    return y, dict(zip(leaves, grads, strict=True)), leaves


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(got).all(), "non-finite values (an element was never written?)"
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_float64_reference(case: Case, triton_backend, poisoned):
    tensors, groups, dy = _inputs(case, triton_backend)
    if not case.activation == "prelu":
        tensors["prelu_weight"] = None
    plan = fna_module.plan(tensors["x"], groups or tensors["x"].shape[1], case.channels_last, case.split_size)
    if case.split_size is not None:
        assert plan.num_splits > 1, f"case does not exercise the split path: {plan}"
    opts = dict(num_groups=groups, activation=case.activation, negative_slope=0.05)

    fused = lambda **t: kernels.fused_norm_act(**t, **opts, split_size=case.split_size)  # noqa: E731
    y, grads, _ = _grads(fused, tensors, dy)
    ref_inputs = {k: None if v is None else v.double() for k, v in tensors.items()}
    y_ref, grads_ref, _ = _grads(lambda **t: fused_norm_act_ref(**t, **opts), ref_inputs, dy.double())

    tol = TOL[case.dtype]
    assert y.dtype == case.dtype and y.shape == tensors["x"].shape
    assert is_channels_last(y) == case.channels_last, "output must keep the input's layout"
    assert _rel_err(y, y_ref) <= tol, f"forward, {plan}"
    assert set(grads) == set(grads_ref)
    for name, g in grads.items():
        assert g is not None, f"no gradient for {name}"
        assert g.dtype == tensors[name].dtype, name
        assert _rel_err(g, grads_ref[name]) <= tol, f"d{name}, {plan}"
    assert is_channels_last(grads["x"]) == case.channels_last


def test_statistics_survive_a_large_offset(triton_backend, poisoned):
    # Mean 3000, std 1: E[x^2] - E[x]^2 in fp32 gets the variance wrong by O(1) (ulp(9e6) = 1). The
    # floor here is the fp32 mean itself, good to half an ulp(3000) = 1.2e-4 std (x is quantized
    # to 2.4e-4 std anyway).
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, 7, 9, 11, generator=g) + 3000.0).to(triton_backend).requires_grad_()
    dy = torch.randn(x.shape, generator=g).to(triton_backend)
    y = kernels.fused_norm_act(x, activation="identity", split_size=64)
    (dx,) = torch.autograd.grad(y, [x], dy)
    xr = x.detach().double().requires_grad_()
    y_ref = fused_norm_act_ref(xr, activation="identity")
    (dx_ref,) = torch.autograd.grad(y_ref, [xr], dy.double())
    assert _rel_err(y, y_ref) <= 1.5e-4 / 3
    assert _rel_err(dx, dx_ref) <= 1.5e-4 / 3


def test_eps_keeps_constant_and_near_constant_channels_finite(triton_backend):
    """Channels whose variance is 0 or ~1e-6 (a dead feature map): eps decides their output."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, 6, 6, generator=g)
    x[0, 0] = 2.0
    x[0, 1] = 2.0 + 1e-3 * torch.randn(6, 6, 6, generator=g)
    x = x.to(triton_backend)
    for eps in (1e-5, 1e-3):
        y = kernels.fused_norm_act(x, activation="identity", eps=eps)
        expected = torch.nn.functional.instance_norm(x.double(), eps=eps)
        assert torch.isfinite(y).all() and (y - expected).abs().max() < 1e-4, eps


@pytest.mark.parametrize("channels_last", [False, True])
def test_2d_images_and_non_dense_inputs(channels_last, triton_backend, poisoned):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 11, 13, generator=g).to(triton_backend)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x[:, :, ::2]  # strided view
    w = torch.randn(6, generator=g).to(triton_backend)
    y = kernels.fused_norm_act(x, w, None, num_groups=2, activation="leaky_relu", split_size=8)
    y_ref = fused_norm_act_ref(x.double(), w.double(), None, num_groups=2, activation="leaky_relu")
    assert _rel_err(y, y_ref) <= 1e-5
    assert is_channels_last(y) == channels_last


def test_strided_per_channel_vectors(triton_backend, poisoned):
    """weight, bias and prelu_weight given as strided views (w[::2]) read the right channels."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 5, 4, 3, generator=g).to(triton_backend).requires_grad_()
    w, b, a = (torch.randn(12, generator=g).to(triton_backend)[::2].requires_grad_() for _ in range(3))
    y = kernels.fused_norm_act(x, w, b, activation="prelu", prelu_weight=a, split_size=16)
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, a)]
    y_ref = fused_norm_act_ref(*leaves[:3], activation="prelu", prelu_weight=leaves[3])
    assert _rel_err(y, y_ref) <= 1e-5
    dy = torch.randn(y.shape, generator=g).to(triton_backend)
    grads = torch.autograd.grad(y, [x, w, b, a], dy)
    grads_ref = torch.autograd.grad(y_ref, leaves, dy.double())
    for name, got, ref in zip("x w b a".split(), grads, grads_ref, strict=True):
        assert _rel_err(got, ref) <= 1e-5, name


def test_dy_in_the_other_layout(triton_backend, poisoned):
    # autograd may hand backward a dy whose strides differ from x's: still correct, x's layout out.
    g = torch.Generator().manual_seed(6)
    x = to_layout(torch.randn(1, 5, 6, 7, 3, generator=g), True).to(triton_backend).requires_grad_()
    dy = torch.randn(1, 5, 6, 7, 3, generator=g).to(triton_backend)  # contiguous
    (dx,) = torch.autograd.grad(kernels.fused_norm_act(x, split_size=16), [x], dy)
    xr = x.detach().double().requires_grad_()
    (dx_ref,) = torch.autograd.grad(fused_norm_act_ref(xr), [xr], dy.double())
    assert _rel_err(dx, dx_ref) <= 1e-5


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(1, 6, 4, 4, 4)
    with pytest.raises(ValueError, match="num_groups=4 does not divide 6"):
        kernels.fused_norm_act(x, num_groups=4)
    with pytest.raises(ValueError, match="prelu needs prelu_weight"):
        kernels.fused_norm_act(x, activation="prelu")
    with pytest.raises(ValueError, match="activation must be one of"):
        kernels.fused_norm_act(x, activation="gelu")
    with pytest.raises(ValueError, match="weight must have shape"):
        kernels.fused_norm_act(x, torch.ones(5))


def test_automatic_split_fills_a_gpu(monkeypatch):
    # Planning is pure arithmetic: check the H100 plan for the headline shape, both layouts.
    from kernels import runtime

    monkeypatch.setattr(runtime, "sm_count", lambda device: 132)
    x = torch.empty(2, 32, 128, 128, 128, device="meta")
    policy = fna_module.POLICY
    for channels_last in (False, True):
        p = fna_module.plan(x, x.shape[1], channels_last, None, policy)
        programs = p.grid[0] * p.grid[1] * p.grid[2]
        assert programs >= 4 * 132, p
        assert p.chunk % p.block_s == 0 and p.num_splits * p.chunk >= p.S > (p.num_splits - 1) * p.chunk
        assert p.block_s * p.block_c <= policy.tile_elements



@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
def test_headline_shape_on_gpu(channels_last, triton_backend, poisoned):
    # The benchmark's shape with the automatic split (hundreds of programs), against fp32 eager.
    g = torch.Generator().manual_seed(0)
    x = to_layout(torch.randn(2, 32, 128, 128, 128, generator=g), channels_last).to("cuda", torch.bfloat16)
    w = (1 + 0.1 * torch.randn(32, generator=g)).cuda().requires_grad_()
    b = (0.1 * torch.randn(32, generator=g)).cuda().requires_grad_()
    dy = torch.randn(x.shape, generator=g).to("cuda", torch.bfloat16)
    x.requires_grad_()
    y = kernels.fused_norm_act(x, w, b)
    grads = torch.autograd.grad(y, [x, w, b], dy)
    xr, wr, br = (t.detach().float().requires_grad_() for t in (x, w, b))
    y_ref = fused_norm_act_ref(xr, wr, br)
    grads_ref = torch.autograd.grad(y_ref, [xr, wr, br], dy.float())
    assert _rel_err(y, y_ref.double()) <= 1e-2
    for got, ref in zip(grads, grads_ref, strict=True):
        assert _rel_err(got, ref.double()) <= 1e-2

