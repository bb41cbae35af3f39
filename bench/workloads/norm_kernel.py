"""`norm_kernel`: instance norm (affine) + LeakyReLU, forward and backward, against the copy ceiling.

Implementations: eager PyTorch (F.instance_norm + F.leaky_relu), `compile` (torch.compile of
the same), `fused_norm` (kernels.fused_norm_act, Triton). Precision variants set x's dtype,
`channels_last` its layout. Achieved GB/s counts the bytes that must move at least — forward:
read x, write y; backward: read x and dy, write dx — over the measured time, compared with the
device's copy bandwidth measured at the start of the run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.measure import peak_memory, reset_peak_memory, time_once, time_steps
from bench.variants import Unavailable
from bench.workloads.common import Case, apply_backend, kernels_api, torch_device
from reports.stats import summarize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _eager(negative_slope: float, eps: float):
    def norm_act(x, weight, bias):
        return F.leaky_relu(F.instance_norm(x, weight=weight, bias=bias, eps=eps), negative_slope)

    return norm_act


def _function(case: Case):
    p, cfg = case.params, case.config
    if cfg.fused_norm:
        (fused,) = kernels_api("fused_norm_act")

        def fn(x, w, b):
            return fused(x, w, b, activation="leaky_relu", negative_slope=p.negative_slope, eps=p.eps)

    else:
        fn = _eager(p.negative_slope, p.eps)
    if cfg.compile_mode:
        from seg.speed import SpeedOptionError, compile_model, inductor_options

        try:
            fn = compile_model(fn, cfg.compile_mode, inductor_options(cfg.inductor))
        except SpeedOptionError as err:  # an option this torch's inductor does not have
            raise Unavailable(str(err)) from None
    return fn


def _inputs(case: Case, device: torch.device, dtype: torch.dtype, channels_last: bool):
    g = torch.Generator().manual_seed(case.measure.seed)
    shape = case.params.shape
    x = torch.randn(*shape, generator=g).to(device, dtype)
    dy = torch.randn(*shape, generator=g).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(shape[1], generator=g)).to(device, dtype)
    bias = (0.1 * torch.randn(shape[1], generator=g)).to(device, dtype)
    if channels_last:
        x, dy = x.to(memory_format=torch.channels_last_3d), dy.to(memory_format=torch.channels_last_3d)
    return x.requires_grad_(), dy, weight.requires_grad_(), bias.requires_grad_()


def make_step(case: Case):
    device = torch_device(case.device)
    apply_backend(case.config, device)
    fn = _function(case)
    x, dy, w, b = _inputs(case, device, DTYPES[case.config.precision], case.config.channels_last)
    forward, backward = _passes(fn, x, dy, w, b)
    return (lambda: (forward(), backward())), device


def _passes(fn, x, dy, w, b):
    """(forward, backward) closures for timing. The backward returns dx, dw, db through
    torch.autograd.grad rather than accumulating into .grad: accumulation would add a read and a
    write of dx to every timed backward after the first, traffic the op itself does not need."""
    graph: dict = {}

    def forward():
        graph["y"] = fn(x, w, b)

    def backward():
        return torch.autograd.grad(graph["y"], (x, w, b), dy)

    return forward, backward


def _parity(case: Case, fn, x, dy, w, b) -> dict:
    """Error of y and dx against fp32 eager on the same (already rounded) input.

    The headline is the relative L2 error (||got - ref|| / ||ref||). The max-abs error is kept
    beside it but is not the headline: around the LeakyReLU kink a low-precision normalized value
    that lands on the other side of zero changes that element's gradient by ~(1 - slope)·|dy|,
    so a handful of elements dominate a max-abs figure while the tensor as a whole is right.
    """
    ref_fn = _eager(case.params.negative_slope, case.params.eps)
    xr = x.detach().float().requires_grad_()
    yr = ref_fn(xr, w.detach().float(), b.detach().float())
    yr.backward(dy.float())
    x.grad = None
    y = fn(x, w, b)
    y.backward(dy)
    got = {"y": y.detach().float(), "dx": x.grad.float()}
    ref = {"y": yr.detach(), "dx": xr.grad}
    rel_l2 = {k: float((got[k] - ref[k]).norm() / ref[k].norm()) for k in got}
    max_rel = {k: float((got[k] - ref[k]).abs().max() / ref[k].abs().max()) for k in got}
    return {
        "reference": "fp32 eager",
        "max_rel_dev": max(rel_l2.values()) if all(map(math.isfinite, rel_l2.values())) else math.inf,
        "metric": "relative L2 error of y and dx (the larger)",
        "y_rel_l2": rel_l2["y"],
        "dx_rel_l2": rel_l2["dx"],
        "y_max_abs_rel": max_rel["y"],
        "dx_max_abs_rel": max_rel["dx"],
    }


def run(case: Case) -> dict:
    device = torch_device(case.device)
    apply_backend(case.config, device)
    m, cfg = case.measure, case.config
    fn = _function(case)
    x, dy, w, b = _inputs(case, device, DTYPES[cfg.precision], cfg.channels_last)
    row: dict = {
        "tensor_shape": case.params.shape,
        "precision": cfg.precision,
        "layout": "channels_last_3d" if cfg.channels_last else "contiguous",
        "impl": "fused_norm" if cfg.fused_norm else "eager PyTorch",
        "compiled": bool(cfg.compile_mode),
    }
    forward, backward = _passes(fn, x, dy, w, b)
    row["first_step_s"] = time_once(lambda: (forward(), backward()), device)
    if m.parity_steps:
        row["parity"] = _parity(case, fn, x, dy, w, b)
        x.grad = w.grad = b.grad = None  # parity's gradients are not part of the timed step's memory
    for _ in range(m.warmup):
        forward()
        backward()
    reset_peak_memory(device)
    fwd = time_steps(forward, m.iters, device)
    bwd = time_steps(backward, m.iters, device, setup=forward)
    row.update(peak_memory(device))
    totals = [f + b_ for f, b_ in zip(fwd, bwd, strict=True)]
    row["s_per_iter"] = summarize(totals)
    row["step_times_s"] = totals
    row["forward_s"], row["backward_s"] = summarize(fwd), summarize(bwd)
    nbytes = math.prod(case.params.shape) * x.element_size()
    row["forward_gb_per_s"] = 2 * nbytes / row["forward_s"]["median"] / 1e9
    row["backward_gb_per_s"] = 3 * nbytes / row["backward_s"]["median"] / 1e9
    copy = case.calibration.get("copy_bytes_per_s")
    if copy:
        row["copy_gb_per_s"] = copy / 1e9
        floor_s = 5 * nbytes / copy  # forward + backward at the copy rate
        row["fraction_of_copy"] = floor_s / row["s_per_iter"]["median"]
    row["samples_per_s"] = case.params.shape[0] / row["s_per_iter"]["median"]
    return row
