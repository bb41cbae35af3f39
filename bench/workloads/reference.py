"""The reference a workload's variants are compared with: the fp32 eager loss trajectory over the
same initial weights and batches, a sample of its first step's gradients, and the FLOPs of one step.
Computed once per run by the first case that needs it and cached in the run folder, so later cases
(own processes) reuse it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from bench.case import reference_cache_path, write_json_atomic
from bench.measure import count_flops
from bench.workloads.common import Case, TrainState, math_mode, release, to_input


def _cache_path(case: Case) -> Path | None:
    return reference_cache_path(case.cache_dir, case.workload) if case.cache_dir else None


def train_reference(
    case: Case, device: torch.device, state: dict, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict:
    """`{variant, losses, grad_samples, flops_per_step}` (or `{variant, error}`) for a training workload:
    the loss trajectory over `parity_steps` steps and a sample of the first step's gradients."""
    path = _cache_path(case)
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    name, cfg = case.reference if case.reference else ("fp32", None)
    result: dict = {"variant": name}
    try:
        from bench.variants import CaseConfig

        # Checkpointing changes no math; off, so the FLOP count is the model's, not its recompute.
        cfg = dataclasses.replace(
            cfg or CaseConfig(), checkpointing=False if case.params.model == "swinunetr" else None
        )
        with math_mode(cfg, device):
            ref = TrainState(case.params, cfg, device, state)
            inputs = [(to_input(x, cfg, device), y.to(device)) for x, y in batches]
            torch.manual_seed(case.measure.seed)
            grads: dict[str, torch.Tensor] = {}  # the first step's, sampled (common.grad_samples)
            result["losses"] = [float(ref.step(x, y, grads if i == 0 else None))
                                for i, (x, y) in enumerate(inputs[: case.measure.parity_steps])]
            result["grad_samples"] = {name: g.cpu().tolist() for name, g in grads.items()}
            result["flops_per_step"] = count_flops(lambda: ref.forward_backward(*inputs[0]))
        ref = inputs = None  # free the reference model before the variant is built
        release(device)
    except Exception as err:  # the reference failing (OOM) must not fail the variant's timing
        result["error"] = f"{type(err).__name__}: {err}"[:500]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, result)
    return result
