"""The fused ops are opaque custom ops: torch.compile keeps them in one graph, with eager's numbers.

`segbench::fused_norm_act_fwd/_bwd` and `segbench::layer_norm_fwd/_bwd` carry fake (meta) versions
and an autograd formula; opcheck checks the schema, the fakes' shapes, dtypes and strides against
the real op, and the autograd registration. Inputs are tiny: the real op is Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.reference import is_channels_last, to_layout


def _net(x, w, nw, nb, pw, r, lw, lb):
    # conv -> group norm + affine + residual + PReLU -> LayerNorm over channels of the permuted tokens
    h = F.conv3d(x, w, padding=1) * 2
    h = kernels.fused_norm_act(h, nw, nb, num_groups=2, activation="prelu", prelu_weight=pw, residual=r)
    t = kernels.layer_norm(h.permute(0, 2, 3, 4, 1), lw, lb)
    return h, t


def _net_inputs(device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(int(channels_last))

    def rand(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g) * scale + offset).to(device).requires_grad_()

    x = rand(2, 3, 6, 5, 4)
    r = rand(2, 4, 6, 5, 4)
    if channels_last:
        x, r = (to_layout(t.detach(), True).requires_grad_() for t in (x, r))
    return (x, rand(4, 3, 3, 3, 3), rand(4, offset=1.0), rand(4), rand(1, scale=0.1, offset=0.2), r,
            rand(4, offset=1.0), rand(4))


def _check_compiled(compiled, inputs, channels_last: bool, **tol):
    out, out_ref = compiled(*inputs), _net(*inputs)
    assert is_channels_last(out[0]) == channels_last, "the compiled graph must keep the op's layout"
    for got, ref in zip(out, out_ref, strict=True):
        assert got.stride() == ref.stride()
        torch.testing.assert_close(got, ref, **tol)
    loss, loss_ref = (sum(t.square().sum() for t in o) for o in (out, out_ref))
    grads, grads_ref = torch.autograd.grad(loss, inputs), torch.autograd.grad(loss_ref, inputs)
    for got, ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, ref, **tol)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_no_graph_break_and_aot_matches_eager(channels_last, triton_backend):
    import torch._dynamo

    inputs = _net_inputs(triton_backend, channels_last)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_net)(*inputs)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    # aot_eager traces forward and backward through the fakes, then runs the real ops
    _check_compiled(torch.compile(_net, backend="aot_eager", fullgraph=True), inputs, channels_last)


def test_inductor_matches_eager(triton_backend):
    import torch._dynamo

    torch._dynamo.reset()
    inputs = _net_inputs(triton_backend, channels_last=True)
    # inductor's own conv and elementwise code around the opaque ops: not bit-identical to eager
    _check_compiled(torch.compile(_net, fullgraph=True), inputs, True, rtol=1e-4, atol=1e-5)


def test_patched_dynunet_compiles_without_graph_breaks(triton_backend):
    # the harness's fused_norm+compile: a patched DynUNet (residual blocks) in one graph, eager's loss
    # and gradients
    import torch._dynamo
    from monai.networks.nets import DynUNet

    torch.manual_seed(3)
    model = DynUNet(3, 4, 4, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2] * 2,
                    filters=[4, 8, 8], norm_name=("instance", {"affine": True}), res_block=True,
                    act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01})).to(triton_backend)
    kernels.patch(model)
    x = torch.randn(1, 4, 16, 16, 16, device=triton_backend)
    target = torch.randint(0, 4, (1, 16, 16, 16), device=triton_backend)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    results = []
    for m in (compiled, model):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(x), target)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, grads), (loss_ref, grads_ref) = results
    torch.testing.assert_close(loss, loss_ref)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name], g, msg=name)


def _opcheck_cases(device):
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    x_cl = to_layout(torch.randn(2, 4, 3, 5, 2, generator=g), True).to(device).requires_grad_()
    r_cl = to_layout(torch.randn(2, 4, 3, 5, 2, generator=g), True).to(device).requires_grad_()
    x_bf16 = rand(1, 3, 4, 5, 3).to(torch.bfloat16).detach().requires_grad_()
    fna = torch.ops.segbench.fused_norm_act_fwd.default
    ln = torch.ops.segbench.layer_norm_fwd.default
    return [
        # op, args: (x, weight, bias, prelu_weight, residual, groups, activation, slope, eps, split_size)
        (fna, (x_cl, rand(4), rand(4), rand(1), r_cl, 2, "prelu", 0.01, 1e-5, None)),
        (fna, (rand(2, 4, 3, 5, 2), None, None, None, rand(2, 4, 3, 5, 2), 4, "identity", 0.01, 1e-5, 8)),
        (fna, (x_bf16, rand(3), None, None, rand(1, 3, 4, 5, 3), 3, "leaky_relu", 0.1, 1e-5, None)),
        (ln, (rand(3, 5, 24), rand(24), rand(24), 1e-5)),
        (ln, (rand(2, 24, 3).transpose(1, 2), None, rand(24), 1e-5)),  # non-contiguous tokens
    ]


def _opcheck_all(device):
    for op, args in _opcheck_cases(device):
        torch.library.opcheck(op, args)  # raises on the first failure, naming the check
        # the backward op on its own (no autograd of its own: plain inputs)
        x = args[0].detach()
        _, mean, rstd = op(*(t.detach() if isinstance(t, torch.Tensor) else t for t in args))
        plain = [t.detach() if isinstance(t, torch.Tensor) else t for t in args]
        if op is torch.ops.segbench.fused_norm_act_fwd.default:
            w, b, pw, r = plain[1:5]
            bwd_args = (torch.randn_like(x), x, w, b, pw, r, mean, rstd, *plain[5:], w is not None,
                        b is not None, pw is not None, None if r is None else r.dtype)
            torch.library.opcheck(torch.ops.segbench.fused_norm_act_bwd.default, bwd_args)
        else:
            w, b, eps = plain[1:4]
            bwd_args = (torch.randn_like(x), x, w, b, mean, rstd, eps, w is not None, b is not None)
            torch.library.opcheck(torch.ops.segbench.layer_norm_bwd.default, bwd_args)


def test_opcheck_triton(triton_backend):
    _opcheck_all(triton_backend)


def test_opcheck_reference(monkeypatch):
    # where Triton cannot run, the same ops run the PyTorch reference: same schema, fakes, autograd
    from kernels import runtime

    monkeypatch.setattr(runtime, "available", lambda: (False, "test: kernels unavailable"))
    _opcheck_all(torch.device("cpu"))
