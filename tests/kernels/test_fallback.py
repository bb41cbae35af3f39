"""Where Triton or CUDA is missing, the ops and patched models run the PyTorch reference."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.networks.nets import DynUNet

import kernels
from kernels import bench, runtime
from kernels.reference import (
    fused_norm_act_bwd_ref,
    fused_norm_act_ref,
    is_channels_last,
    layer_norm_bwd_ref,
    layer_norm_ref,
    to_layout,
)


def test_no_cuda_and_no_interpreter_is_unavailable(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = kernels.available()
    assert not ok and "no CUDA device" in why


def test_missing_triton_is_unavailable(monkeypatch):
    why = "triton is not installed (No module named 'triton')"
    monkeypatch.setattr(runtime, "_triton_import_error", lambda: why)
    assert kernels.available() == (False, why)


def test_cpu_tensors_on_a_cuda_machine_use_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kernels.available()[0]
    assert not runtime.use_triton(torch.zeros(1))


@pytest.fixture
def no_triton(monkeypatch):
    monkeypatch.setattr(runtime, "available", lambda: (False, "test: kernels unavailable"))

    def refuse(module):
        raise AssertionError(f"{module} must not be loaded when the kernels are unavailable")

    monkeypatch.setattr(runtime, "load_kernels", refuse)


def test_ops_fall_back_to_the_reference(no_triton):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, 4, 3, generator=g).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    w, b = torch.randn(6, generator=g).requires_grad_(), torch.randn(6, generator=g).requires_grad_()
    pw = torch.tensor([0.2], requires_grad=True)
    y = kernels.fused_norm_act(x, w, b, num_groups=3, activation="prelu", prelu_weight=pw)
    assert is_channels_last(y)
    y_ref = fused_norm_act_ref(x, w, b, num_groups=3, activation="prelu", prelu_weight=pw)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    grads = torch.autograd.grad(y.square().sum(), [x, w, b, pw])
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, w, b, pw])  # autograd through the reference
    for got, ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert is_channels_last(grads[0])

    tokens = torch.randn(3, 7, 24, generator=g, dtype=torch.bfloat16)
    lw, lb = torch.randn(24, generator=g), torch.randn(24, generator=g)
    y = kernels.layer_norm(tokens, lw, lb)
    torch.testing.assert_close(y, layer_norm_ref(tokens, lw, lb), rtol=0, atol=0)


@pytest.mark.parametrize("activation,groups,residual,channels_last", [
    ("identity", None, False, False),
    ("relu", 2, True, True),
    ("leaky_relu", None, True, False),
    ("prelu", 3, False, True),  # one PReLU weight
    ("prelu", None, True, False),  # one per channel
])
def test_reference_backward_matches_autograd(activation, groups, residual, channels_last):
    # the written-out backward the ops run without Triton, against autograd through the reference
    g = torch.Generator().manual_seed(len(activation) + 7 * bool(residual))
    shape = (2, 6, 5, 4, 3)
    leaves = dict(x=to_layout(torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1, channels_last),
                  weight=1 + torch.randn(6, generator=g, dtype=torch.float64) * 0.5,
                  bias=torch.randn(6, generator=g, dtype=torch.float64),
                  prelu_weight=torch.rand(6 if groups is None else 1, generator=g, dtype=torch.float64),
                  residual=torch.randn(shape, generator=g, dtype=torch.float64) if residual else None)
    if activation != "prelu":
        leaves["prelu_weight"] = None
    leaves = {k: v.requires_grad_() for k, v in leaves.items() if v is not None}
    opts = dict(num_groups=groups or 6, activation=activation, negative_slope=0.05, eps=1e-5)
    y = fused_norm_act_ref(**leaves, **opts)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    expected = dict(zip(leaves, torch.autograd.grad(y, list(leaves.values()), dy), strict=True))
    names = ("x", "weight", "bias", "prelu_weight", "residual")
    args = [None if leaves.get(k) is None else leaves[k].detach() for k in names]
    got = dict(zip(names, fused_norm_act_bwd_ref(dy, *args, **opts), strict=True))
    for name, ref in expected.items():
        torch.testing.assert_close(got[name], ref, rtol=1e-10, atol=1e-12, msg=name)
    assert is_channels_last(got["x"]) == channels_last


def test_layer_norm_reference_backward_matches_autograd():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 7, 24, generator=g, dtype=torch.float64) * 2 + 3).requires_grad_()
    w = (1 + 0.5 * torch.randn(24, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.randn(24, generator=g, dtype=torch.float64).requires_grad_()
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(layer_norm_ref(x, w, b), [x, w, b], dy)
    for got, ref in zip(layer_norm_bwd_ref(dy, x.detach(), w.detach(), b.detach()), expected, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    dx, dw, db = layer_norm_bwd_ref(dy, x.detach(), None, None)
    assert dw is None and db is None
    torch.testing.assert_close(dx, torch.autograd.grad(layer_norm_ref(x, None, None), [x], dy)[0])


def test_patched_model_falls_back(no_triton):
    torch.manual_seed(0)
    model = DynUNet(3, 4, 4, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2] * 2,
                    filters=[4, 8, 8], norm_name="instance", res_block=True)
    x = torch.randn(1, 4, 16, 16, 16)
    y_ref = model(x)
    y = kernels.patch(model)(x)
    assert kernels.patched_modules(model)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()


def test_time_norm_on_cpu():
    out = bench.time_norm("eager", (1, 4, 8, 8, 8), "fp32", "channels_last", "bwd", "cpu", warmup=1, iters=3)
    assert out["ms"] > 0 and out["n"] == 3
    assert out["bytes"] == 3 * 4 * 8**3 * 4
    assert out["gb_per_s"] == pytest.approx(out["bytes"] / (out["ms"] * 1e-3) / 1e9)


def test_time_norm_refuses_unavailable_kernels(no_triton):
    with pytest.raises(RuntimeError, match="test: kernels unavailable"):
        bench.time_norm("fused", (1, 4, 8, 8, 8), "fp32", "contiguous", "fwd", "cpu")


def test_import_kernels_leaves_triton_unimported():
    # so a CPU process can still choose Triton's interpreter after `import kernels`
    code = "import sys, kernels; print('triton' in sys.modules, 'torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_fused_micro_benchmark_refuses_a_device_the_kernels_do_not_serve(monkeypatch):
    """On a CUDA machine, `--device cpu` would time the PyTorch reference under the name "fused"."""
    from kernels import bench, runtime

    monkeypatch.setattr(runtime, "available", lambda: (True, ""))
    monkeypatch.setattr(runtime, "interpret_mode", lambda: False)
    with pytest.raises(RuntimeError, match="run on CUDA tensors"):
        bench.make_step("fused", (1, 4, 8, 8, 8), "fp32", bench.LAYOUTS[0], "fwd", "cpu")
