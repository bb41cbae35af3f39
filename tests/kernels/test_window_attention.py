"""kernels.window_attention against a float64 reference with the kernels' own dropout mask."""

from __future__ import annotations

import pytest
import torch

from kernels import window_attention as wa


def _inputs(R, H, N, D, device, dtype=torch.float32, bias_grad=True, seed=0):
    """q, k, v as Swin makes them: strided views of one (R, N, 3, H, D) projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(R, N, 3, H, D, generator=g).to(device, dtype)
    q, k, v = (t.detach().requires_grad_() for t in qkv.permute(2, 0, 3, 1, 4).unbind(0))
    bias = (torch.randn(H, N, N, generator=g) * 2).to(device, dtype).requires_grad_(bias_grad)
    return q, k, v, bias


def _reference(q, k, v, bias, dropout_p, keep, grad_out):
    """Outputs and gradients in float64 (METHOD: the reference in higher precision)."""
    leaves = [t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v, bias)]
    out = wa.window_attention_ref(*leaves, dropout_p, scale=0.3, keep=keep)
    out.backward(grad_out.double())
    return out, [t.grad for t in leaves]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("N, D", [(20, 8), (70, 8), (27, 32)])  # 70: two tiles, the second partial
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_forward_and_gradients_match_the_reference(triton_backend, poisoned, N, D, dropout_p):
    R, H = 3, 2
    q, k, v, bias = _inputs(R, H, N, D, triton_backend)
    out = wa.window_attention(q, k, v, bias, dropout_p, scale=0.3, seed=11)
    assert out.shape == (R, H, N, D) and out.transpose(1, 2).is_contiguous()
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    keep = wa.keep_mask(R, H, N, dropout_p, 11, triton_backend) if dropout_p else None
    ref, ref_grads = _reference(q, k, v, bias, dropout_p, keep, grad_out)
    assert _rel(out, ref) < 1e-5
    for name, t, g in zip("q k v bias".split(), (q, k, v, bias), ref_grads, strict=True):
        assert torch.isfinite(t.grad).all(), name
        assert _rel(t.grad, g) < 1e-5, name


@pytest.fixture(params=["fp32_precision", "allow_tf32"])  # torch's new and legacy TF32 switches
def tf32_matmuls(request):
    # set and restored by hand: monkeypatch cannot undo cuBLASModule's computed attributes
    matmul, switch = torch.backends.cuda.matmul, request.param
    before = getattr(matmul, switch)
    setattr(matmul, switch, "tf32" if switch == "fp32_precision" else True)
    yield
    setattr(matmul, switch, before)


def test_float32_takes_tf32_only_when_torch_matmuls_do(triton_backend):
    assert wa.dot_precision(torch.float32) == "ieee" and wa.dot_precision(torch.bfloat16) is None


def test_float32_with_tf32_matmuls_on(triton_backend, tf32_matmuls):
    assert wa.dot_precision(torch.float32) is None  # the backend's default: TF32 on NVIDIA sm_80+
    q, k, v, bias = _inputs(3, 2, 20, 8, triton_backend)
    out = wa.window_attention(q, k, v, bias, 0.0, scale=0.3, seed=1)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref, ref_grads = _reference(q, k, v, bias, 0.0, None, grad_out)
    # TF32 keeps 10 mantissa bits (the interpreter rounds like the GPU here): ~1e-3, not fp32's 1e-7
    assert 1e-5 < _rel(out, ref) < 5e-3
    assert all(_rel(t.grad, g) < 5e-3 for t, g in zip((q, k, v, bias), ref_grads, strict=True))


def test_bias_gradient_summed_over_chunks_of_rows(triton_backend, monkeypatch):
    # many dbias programs per SM: each takes one or two rows, the host sums the partials
    monkeypatch.setattr(wa, "_DBIAS_PROGRAMS_PER_SM", 64)
    q, k, v, bias = _inputs(5, 2, 20, 8, triton_backend)
    out = wa.window_attention(q, k, v, bias, 0.1, scale=0.3, seed=3)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    _, ref_grads = _reference(q, k, v, bias, 0.1, wa.keep_mask(5, 2, 20, 0.1, 3, triton_backend), grad_out)
    assert _rel(bias.grad, ref_grads[3]) < 1e-5


def test_rows_whose_first_key_tile_is_all_masked_stay_finite(triton_backend):
    """A -inf bias over a whole first key tile (a boolean-style mask): the online softmax must not
    take exp(-inf - -inf) for those rows (Swin's own mask is -100, but callers may pass -inf)."""
    q, k, v, bias = _inputs(2, 2, 40, 8, triton_backend, bias_grad=False)
    block_n = wa.CONFIGS["fwd"][1]
    bias = bias.detach().clone()
    bias[:, :5, :block_n] = float("-inf")  # rows 0-4 see keys only from the second tile on
    out = wa.window_attention(q, k, v, bias, 0.0, scale=0.3)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref, ref_grads = _reference(q, k, v, bias, 0.0, None, grad_out)
    assert torch.isfinite(out).all() and _rel(out, ref) < 1e-5
    for name, t, g in zip("q k v".split(), (q, k, v), ref_grads[:3], strict=True):
        assert torch.isfinite(t.grad).all() and _rel(t.grad, g) < 1e-5, name


def test_rows_with_every_key_masked_give_zeros_as_sdpa_does(triton_backend):
    q, k, v, bias = _inputs(2, 2, 40, 8, triton_backend, bias_grad=False)
    bias = bias.detach().clone()
    bias[:, :3, :] = float("-inf")  # rows 0-2 attend to nothing
    out = wa.window_attention(q, k, v, bias, 0.0, scale=0.3)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    assert torch.isfinite(out).all() and (out[:, :, :3] == 0).all()
    ok = [slice(None), slice(None), slice(3, None)]  # the other rows as the reference computes them
    ref, ref_grads = _reference(q, k, v, bias, 0.0, None, grad_out)
    assert _rel(out[ok], ref[ok]) < 1e-5
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :, :3] == 0).all()


def test_a_frozen_bias_gets_no_gradient(triton_backend):
    q, k, v, bias = _inputs(2, 1, 20, 8, triton_backend, bias_grad=False)
    out = wa.window_attention(q, k, v, bias, scale=0.3)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    _, ref_grads = _reference(q, k, v, bias, 0.0, None, grad_out)
    assert bias.grad is None and _rel(q.grad, ref_grads[0]) < 1e-5


def test_dropout_masks_keep_1_minus_p_and_follow_the_seed(triton_backend):
    keep = wa.keep_mask(8, 3, 40, 0.2, 5, triton_backend)
    assert keep.float().mean().item() == pytest.approx(0.8, abs=0.01)
    assert torch.equal(keep, wa.keep_mask(8, 3, 40, 0.2, 5, triton_backend))
    other = wa.keep_mask(8, 3, 40, 0.2, 6, triton_backend)
    assert (keep != other).float().mean().item() > 0.2
    assert (keep[0, 0] != keep[1, 0]).any() and (keep[0, 0] != keep[0, 1]).any()  # per (row, head)
    q, k, v, bias = _inputs(2, 1, 20, 8, triton_backend)
    torch.manual_seed(0)
    a = wa.window_attention(q, k, v, bias, 0.2)
    torch.manual_seed(0)
    assert torch.equal(a, wa.window_attention(q, k, v, bias, 0.2))  # seed drawn from torch's generator


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(triton_backend, dtype):
    # (interpreted, bf16 runs in float32: the interpreter's bf16 tl.dot is off by ~1e8)
    q, k, v, bias = _inputs(2, 2, 30, 8, triton_backend, dtype=dtype)
    out = wa.window_attention(q, k, v, bias, scale=0.3)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref, ref_grads = _reference(q, k, v, bias, 0.0, None, grad_out)
    assert out.dtype == dtype and _rel(out, ref) < 1e-2
    for t, g in zip((q, k, v, bias), ref_grads, strict=True):
        assert t.grad.dtype == dtype and _rel(t.grad, g) < 2e-2


def test_compiles_as_one_graph(triton_backend):
    q, k, v, bias = _inputs(2, 2, 20, 8, triton_backend)

    def f(q, k, v, bias, seed=5):
        return wa.window_attention(q, k, v, bias, 0.2, scale=0.3, seed=seed).sum()

    # the seed drawn per call is a device tensor: no .item(), no graph break, no constant baked in
    explain = torch._dynamo.explain(lambda *a: f(*a, seed=None))(q, k, v, bias)
    assert explain.graph_break_count == 0
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    compiled(q, k, v, bias).backward()
    grads = [t.grad.clone() for t in (q, k, v, bias)]
    for t in (q, k, v, bias):
        t.grad = None
    f(q, k, v, bias).backward()
    for a, t in zip(grads, (q, k, v, bias), strict=True):
        torch.testing.assert_close(a, t.grad)
    drawn = torch.compile(lambda *a: f(*a, seed=None), backend="aot_eager", fullgraph=True)
    assert not torch.equal(drawn(q, k, v, bias), drawn(q, k, v, bias))  # a fresh mask per call


def test_bad_shapes_are_one_clear_error(triton_backend):
    q, k, v, bias = _inputs(2, 2, 20, 8, triton_backend)
    with pytest.raises(ValueError, match=r"bias must be \(2, 20, 20\)"):
        wa.window_attention(q, k, v, bias[:, :10])
    with pytest.raises(ValueError, match="q, k, v must be"):
        wa.window_attention(q, k[:1], v, bias)
    with pytest.raises(ValueError, match="head dim must be contiguous"):
        wa.window_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3), bias[:, :8, :8])


def test_benchmark_shapes_and_parity_glue(triton_backend):
    """kernels.bench_window_attention (GPU only) on the interpreter's scale: its stage shapes and parity."""
    from kernels import bench_window_attention as bench

    s1, s2, s3, s4 = bench.stage_shapes(24, 128)
    assert (s1["rows"], s1["heads"], s1["tokens"], s1["head_dim"]) == (729, 3, 343, 8)
    assert (s2["rows"], s2["heads"], s2["head_dim"]) == (64, 6, 8) and s4["rows"] == 1
    assert bench.stage_shapes(48, 128)[0]["head_dim"] == 16
    tiny = dict(rows=2, heads=2, tokens=20, head_dim=8)
    for fn in bench.IMPLS.values():
        errors = bench.parity(fn, tiny, torch.float32, triton_backend.type)
        assert set(errors) == {"out", "dq", "dk", "dv", "dbias"} and max(errors.values()) < 1e-5


def test_every_benchmarked_tile_set_computes_the_same_function(triton_backend):
    """--sweep times kernels.window_attention at other tiles: each must stay right (dropout masks too)."""
    from kernels import bench_window_attention as bench

    q, k, v, bias = _inputs(2, 2, 70, 8, triton_backend)
    out = wa.window_attention(q, k, v, bias, 0.3, scale=0.3, seed=4)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    default = [t.grad.clone() for t in (q, k, v, bias)]
    saved = dict(wa.CONFIGS)
    try:
        for tiles in bench.TILE_SETS.values():
            wa.CONFIGS.update(tiles)
            for t in (q, k, v, bias):
                t.grad = None
            again = wa.window_attention(q, k, v, bias, 0.3, scale=0.3, seed=4)
            again.backward(grad_out)
            assert _rel(again, out) < 1e-6
            for a, t in zip(default, (q, k, v, bias), strict=True):
                assert _rel(t.grad, a) < 1e-5
    finally:
        wa.CONFIGS.update(saved)


def test_float64_runs_as_it_did(triton_backend):
    # (the norm kernels send float64 to their references; window attention has none: it runs the kernels)
    q, k, v, bias = _inputs(2, 2, 13, 8, triton_backend, dtype=torch.float64)
    out = wa.window_attention(q, k, v, bias, scale=0.3)
    out.sum().backward()
    ref, _ = _reference(q, k, v, bias, 0.0, None, torch.ones_like(out))
    assert out.dtype == torch.float64 and _rel(out, ref) < 1e-5 and q.grad is not None


def test_fake_tensors_see_bf16_where_the_interpreter_computes_in_float32(triton_backend):
    # the interpreter's bf16 stand-in runs inside the ops: the footprint estimate and torch.compile
    # (fake tensors) see the bf16 step a GPU runs, not float32 copies
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Casts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default:
                self.dtypes.append(out.dtype)
            return out

    with FakeTensorMode():
        q, k, v = (torch.empty(2, 2, 13, 8, dtype=torch.bfloat16, device=triton_backend, requires_grad=True)
                   for _ in range(3))
        bias = torch.empty(2, 13, 13, dtype=torch.bfloat16, device=triton_backend, requires_grad=True)
        with Casts() as casts:
            out = wa.window_attention(q, k, v, bias, 0.1)
            out.sum().backward()
    assert out.dtype == torch.bfloat16 and q.grad.dtype == torch.bfloat16
    assert torch.float32 not in casts.dtypes
