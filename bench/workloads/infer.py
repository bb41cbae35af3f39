"""`infer`: sliding-window inference of one whole volume (seg.infer.sliding_window_predict),
with or without test-time augmentation. One iteration = one volume.

Parity: the variant's probabilities against fp32 eager on the same weights and volume (same TTA
setting): max absolute difference, and the share of voxels whose predicted label differs.
"""

from __future__ import annotations

import math

import torch

from bench.measure import count_flops, steady_state, time_once
from bench.variants import CaseConfig
from bench.workloads.common import (
    Case,
    apply_backend,
    attention_kernels_fields,
    build_model,
    initial_state,
    math_mode,
    profile_fields,
    release,
    to_input,
    torch_device,
)


def _predictor(case: Case, cfg: CaseConfig, device: torch.device, state: dict, image: torch.Tensor):
    """(the eval model, a call that predicts the whole volume with it)."""
    from profiles.nvtx import nvtx_range
    from seg.infer import sliding_window_predict

    p = case.params
    model = build_model(p.model, p.model_options, cfg, device, state).eval()
    x = to_input(image, cfg, device)

    def predict() -> torch.Tensor:
        with nvtx_range("inference"):  # the phase an Nsight Systems timeline names, as training's steps
            return sliding_window_predict(model, x, roi=p.roi, overlap=p.overlap,
                                          sw_batch_size=p.sw_batch_size, mode=p.mode, tta=case.config.tta,
                                          precision=cfg.precision)

    return model, predict


def _volume(case: Case) -> torch.Tensor:
    g = torch.Generator().manual_seed(case.measure.seed)
    return torch.randn(1, 4, *case.params.volume, generator=g)


def make_step(case: Case):
    device = torch_device(case.device)
    apply_backend(case.config, device)
    p = case.params
    state = initial_state(p.model, p.model_options, case.measure.seed)
    return _predictor(case, case.config, device, state, _volume(case))[1], device


def run(case: Case) -> dict:
    device = torch_device(case.device)
    apply_backend(case.config, device)
    p, m = case.params, case.measure
    state = initial_state(p.model, p.model_options, m.seed)
    image = _volume(case)
    row: dict = {
        "model": p.model,
        "volume": p.volume,
        "roi": p.roi,
        "tta": case.config.tta,
        "precision": case.config.precision,
    }

    reference = None
    if m.parity_steps and case.reference:
        ref_name, ref_cfg = case.reference
        ref_model, predict_ref = _predictor(case, ref_cfg, device, state, image)
        out: list[torch.Tensor] = []
        with math_mode(ref_cfg, device):
            row["flops_per_step"] = count_flops(lambda: out.append(predict_ref()))
        reference = out[0]
        del ref_model, predict_ref, out  # the reference's weights must not count in the variant's peak
        release(device)

    model, predict = _predictor(case, case.config, device, state, image)
    result: list[torch.Tensor] = []
    row["first_step_s"] = time_once(lambda: result.append(predict()), device)
    if reference is not None:
        probs = result[0]
        row["parity"] = {
            "reference": ref_name,
            # the contract's headline deviation; relative L2 as norm_kernel reports it
            "max_rel_dev": float((probs - reference).norm() / reference.norm()),
            "metric": "relative L2 error of the class probabilities",
            "max_abs_err": float((probs - reference).abs().max()),
            "label_disagreement": float((probs.argmax(1) != reference.argmax(1)).float().mean()),
        }
    result.clear()
    reference = probs = None  # neither may sit in the timed steps' peak (a BraTS volume: 143 MB each)
    release(device)
    row.update(steady_state(predict, m.warmup, m.iters, device))
    median = row["s_per_iter"]["median"]
    row["samples_per_s"] = 1 / median
    row["voxels_per_s"] = math.prod(p.volume) / median
    rate = case.calibration.get("matmul_flops_per_s")
    if row.get("flops_per_step") and rate:
        row["mfu"] = row["flops_per_step"] / median / rate
    row.update(profile_fields(case, predict, device))
    row.update(attention_kernels_fields(lambda: _attention_kernels(model, case.config, device, p.roi)))
    return row


def _attention_kernels(model: torch.nn.Module, cfg: CaseConfig, device: torch.device, roi) -> dict[str, int]:
    """The SDPA kernels of one window's forward (profiles.attention_kernels), eager, no autograd:
    inference may pick another kernel than training (cuDNN takes a mask that needs no gradient)."""
    from profiles.attention_kernels import count_attention_kernels
    from seg.recipe import autocast
    from seg.train.checkpoint import bare_module

    window = to_input(torch.zeros(1, 4, *roi), cfg, device)

    def forward() -> None:
        with torch.no_grad(), autocast(cfg.precision, device.type):
            bare_module(model)(window)

    return count_attention_kernels(forward)
