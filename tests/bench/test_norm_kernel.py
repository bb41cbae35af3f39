"""bench.workloads.norm_kernel: what the timed backward does."""

import torch
import torch.nn.functional as F

from bench.workloads.norm_kernel import _passes


def _norm_act(x, w, b):
    return F.leaky_relu(F.instance_norm(x, weight=w, bias=b, eps=1e-5), 0.01)


def test_timed_backward_returns_the_gradient_without_accumulating_into_grad():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, 4, 4, generator=g).requires_grad_()
    dy = torch.randn(1, 3, 4, 4, 4, generator=g)
    w = torch.rand(3, generator=g).requires_grad_()
    b = torch.rand(3, generator=g).requires_grad_()
    expected = torch.autograd.grad(_norm_act(x, w, b), (x, w, b), dy)

    forward, backward = _passes(_norm_act, x, dy, w, b)
    for _ in range(3):  # repeated steps, as the timer runs them
        forward()
        backward()
    # an accumulating backward (.backward()) would add a read-modify-write of dx to each timed step
    assert x.grad is None and w.grad is None and b.grad is None
    forward()
    for e, g_ in zip(expected, backward(), strict=True):
        torch.testing.assert_close(g_, e)
