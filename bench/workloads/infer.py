"""`infer`: sliding-window inference of one whole volume (seg.infer.sliding_window_predict),
with or without test-time augmentation. One iteration = one volume.

Parity: the variant's probabilities against fp32 eager on the same weights and volume (same TTA
setting): relative L2, max absolute difference, and the share of voxels whose predicted label differs.
The reference runs in a process of its own before the workload's first case (the runner's) and is
cached in the run folder, so every row's first step starts cold alike.
"""

from __future__ import annotations

import json
import math
import os

import torch

from bench.case import reference_cache_path, reference_cached, reference_name, write_json_atomic
from bench.compile_stats import CompileWatch
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


def probability_parity(probs: torch.Tensor, ref: torch.Tensor) -> dict:
    """How far class probabilities [B, C, *spatial] sit from the reference's: the contract's headline
    deviation (relative L2, as norm_kernel reports it), the largest error, and the share of voxels
    whose predicted class differs."""
    return {
        "max_rel_dev": float((probs - ref).norm() / ref.norm()),
        "metric": "relative L2 error of the class probabilities",
        "max_abs_err": float((probs - ref).abs().max()),
        "label_disagreement": float((probs.argmax(1) != ref.argmax(1)).float().mean()),
    }


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


def _reference(case: Case, device: torch.device, state: dict, image: torch.Tensor) -> dict:
    """{"variant", "flops_per_step", "probs" (on the CPU)} of the workload's reference (fp32 eager, with
    this case's TTA setting), or {"variant", "error"}: read from the run's cache (one per workload and
    TTA setting), where the runner's reference process put it
    (`cache_reference`: no row's first step then finds cuDNN's search or the libraries warmed by it),
    else computed here and cached."""
    name, ref_cfg = case.reference
    name_tta = reference_name(case.workload, "infer", case.config.tta)
    path = reference_cache_path(case.cache_dir, name_tta) if case.cache_dir else None
    if path is not None and reference_cached(case.cache_dir, name_tta, "infer"):
        result = json.loads(path.read_text())
        if "error" not in result:
            result["probs"] = torch.load(path.with_suffix(".pt"), weights_only=True)
        return result
    result: dict = {"variant": name, "tta": case.config.tta}
    try:
        _, predict_ref = _predictor(case, ref_cfg, device, state, image)  # (its closure holds the model)
        out: list[torch.Tensor] = []
        with math_mode(ref_cfg, device):
            result["flops_per_step"] = count_flops(lambda: out.append(predict_ref()))
        probs = out[0].float().cpu()
        predict_ref = out = None  # the reference's weights must not count in the variant's peak
        release(device)
    except Exception as err:  # the reference failing (OOM) must not fail the variant's timing
        result["error"] = f"{type(err).__name__}: {err}"[:500]
        probs = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if probs is not None:  # the tensor first: the JSON's presence says both are whole
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.pt")
            torch.save(probs, tmp)
            tmp.replace(path.with_suffix(".pt"))
        write_json_atomic(path, result)
    return result if probs is None else {**result, "probs": probs}


def cache_reference(case: Case) -> dict:
    """Compute and cache the workload's reference probabilities (`_reference`), in the runner's process
    of its own before the workload's first case."""
    device = torch_device(case.device)
    apply_backend(case.config, device)
    state = initial_state(case.params.model, case.params.model_options, case.measure.seed)
    reference = _reference(case, device, state, _volume(case))
    return {"reference": reference["variant"], "error": reference.get("error")}


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

    reference = _reference(case, device, state, image) if m.parity_steps and case.reference else None
    if reference is not None and "flops_per_step" in reference:
        row["flops_per_step"] = reference["flops_per_step"]

    watch = CompileWatch(case.config.compile_mode)  # (the reference above ran eagerly)
    model, predict = _predictor(case, case.config, device, state, image)
    result: list[torch.Tensor] = []
    row["first_step_s"] = time_once(lambda: result.append(predict()), device)
    if reference is not None and "probs" in reference:
        probs, ref = result[0].float().cpu(), reference.pop("probs")
        row["parity"] = {"reference": reference["variant"], **probability_parity(probs, ref)}
        ref = None
    elif reference is not None:
        row["parity"] = {"reference": reference["variant"], "error": reference.get("error")}
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
    row.update(watch.fields())
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
