"""`train_step`: one optimizer step of a seg model on a fixed batch already on the device.

Compute alone, like nnU-Net's no-data-loading trainer: seg.recipe.train_step (forward under
autocast, DiceCE, backward, fused AdamW, GradScaler for fp16) is exactly what training runs.

Phases, in one process: parity (the first K steps from the shared initial weights, on the K
parity batches; the first of them is `first_step_s`, compile included), warm-up, the measured
block (peak memory reset before it), then, when the suite quotes a speedup, the baseline is built
beside the variant and the two run in alternating blocks (B V, V B, ...), so drift in clocks or
temperature hits both alike (TorchBench's A/B method).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bench.compile_stats import CompileWatch
from bench.measure import Laps, max_rel_dev, steady_state, time_once, time_steps, watched
from bench.workloads.common import (
    Case,
    TrainState,
    apply_backend,
    attention_kernels_fields,
    disable_dropout_note,
    grad_rel_dev,
    initial_state,
    math_mode,
    profile_fields,
    synthetic_batch,
    to_input,
    torch_device,
)
from bench.workloads.reference import train_reference
from reports.stats import paired_blocks_ratio_ci, summarize


def _batches(case: Case) -> list[tuple[torch.Tensor, torch.Tensor]]:
    p, seed = case.params, case.measure.seed
    return [
        synthetic_batch(p.batch, p.shape, seed * 1000 + i) for i in range(max(1, case.measure.parity_steps))
    ]


def make_step(case: Case) -> tuple[Callable[[], object], torch.device]:
    """A ready-to-call training step of the case's variant (for the profiler)."""
    device = torch_device(case.device)
    apply_backend(case.config, device)
    p = case.params
    state = TrainState(p, case.config, device, initial_state(p.model, p.model_options, case.measure.seed))
    x, y = synthetic_batch(p.batch, p.shape, case.measure.seed)
    x, y = to_input(x, case.config, device), y.to(device)
    return (lambda: state.step(x, y)), device


def interleaved(
    variant_step: Callable[[], object], baseline_step: Callable[[], object], case: Case, device: torch.device
) -> tuple[list[list[float]], list[list[float]]]:
    """`repeats` pairs of blocks, ordered AB BA AB BA … (an even count cancels a linear drift), after
    one pair run and dropped (the first switches between the two models settle caches and clocks:
    a transient there favoured the variant); returns (baseline blocks, variant blocks) of step times,
    pair i at index i in both."""
    for step in (baseline_step, variant_step):
        time_steps(step, case.measure.block, device)
    base, var = [], []
    for r in range(case.measure.repeats):
        order = ((base, baseline_step), (var, variant_step))
        for blocks, step in order if r % 2 == 0 else order[::-1]:
            blocks.append(time_steps(step, case.measure.block, device))
    return base, var


def _set_up(case: Case) -> tuple[torch.device, dict, list, dict]:
    """(device, initial weights, batches, the reference trajectory: cached, or computed and cached)."""
    device = torch_device(case.device)
    apply_backend(case.config, device)
    init = initial_state(case.params.model, case.params.model_options, case.measure.seed)
    batches = _batches(case)
    return device, init, batches, train_reference(case, device, init, batches)


def cache_reference(case: Case) -> dict:
    """Compute and cache the workload's reference trajectory (train_reference), in the runner's process
    of its own before the workload's first case."""
    reference = _set_up(case)[3]
    return {"reference": reference["variant"], "error": reference.get("error")}


def run(case: Case) -> dict:
    laps = Laps()
    watch = CompileWatch(case.config.compile_mode)
    device, init, batches, reference = _set_up(case)
    p, m = case.params, case.measure
    row: dict = {"model": p.model, "shape": p.shape, "batch": p.batch, "precision": case.config.precision}

    state = TrainState(p, case.config, device, init)
    inputs = [(to_input(x, case.config, device), y.to(device)) for x, y in batches]
    if state.cpu_bf16_workaround(inputs[0][0]):
        row["cpu_bf16_workaround"] = True
    laps.lap("setup")
    torch.manual_seed(m.seed)
    losses: list[float] = []
    # the first step's gradients, sampled on the device (a few ms in the first step: no host sync)
    grads = {} if m.parity_steps and case.reference else None
    row["first_step_s"] = time_once(lambda: losses.append(float(state.step(*inputs[0], grads=grads))), device)
    laps.lap("first_step")
    for x, y in inputs[1 : m.parity_steps]:
        losses.append(float(state.step(x, y)))
    laps.lap("parity")
    if m.parity_steps and case.reference:
        parity = {"reference": reference["variant"], "steps": m.parity_steps}
        if "losses" in reference and not all(math.isfinite(v) for v in reference["losses"]):
            # the reference diverged: nothing to measure against, whatever the variant did
            parity["error"] = f"the {reference['variant']} reference's losses were non-finite"
        elif "losses" in reference:
            parity["max_rel_dev"] = max_rel_dev(losses, reference["losses"])
            if state.scaler.is_enabled() and not all(bool(g.isfinite().all()) for g in grads.values()):
                # GradScaler's first scale overflowed fp16: it skips that step, as training would
                parity["grad_error"] = "the first fp16 step overflowed (GradScaler skipped it): no gradients"
            elif "grad_samples" in reference:  # (a reference cached by an older run has none)
                parity.update(grad_rel_dev(grads, reference["grad_samples"]))
        else:
            parity["error"] = reference.get("error")
        if disable_dropout_note(state.model):
            parity["note"] = (
                "model has dropout: variants that draw random numbers differently differ by it too"
            )
        row["parity"] = parity
    if any(not math.isfinite(v) for v in losses):
        row["warning"] = f"non-finite loss in the first {len(losses)} steps: {losses}"

    x, y = inputs[0]
    del inputs[1:], batches[:]  # the other parity batches: not part of a training step's memory
    step = lambda: state.step(x, y)  # noqa: E731
    row.update(steady_state(step, m.warmup, m.iters, device))
    laps.lap("timing")
    median = row["s_per_iter"]["median"]
    voxels = math.prod(p.shape)
    row["samples_per_s"] = p.batch / median
    row["voxels_per_s"] = p.batch * voxels / median
    flops = reference.get("flops_per_step")
    if flops:
        row["flops_per_step"] = flops
        rate = case.calibration.get("matmul_flops_per_s")
        if rate:
            row["mfu"] = flops / median / rate

    if case.baseline is not None:
        row["paired"] = _paired(case, device, init, step)
        laps.lap("paired")
    row.update(watch.fields())  # (before the profiler's steps: a recompile there is its own story)
    row.update(profile_fields(case, step, device))
    laps.lap("profile")
    # Last: one more (eager) step, whose gradients are dropped.
    row.update(attention_kernels_fields(lambda: state.attention_kernels(x, y)))
    laps.lap("attention_kernels")
    row["phase_s"] = laps.s
    return row


def _paired(case: Case, device: torch.device, init: dict, variant_step: Callable[[], object]) -> dict:
    name, cfg = case.baseline
    paired: dict = {"baseline": name}
    try:
        base = TrainState(case.params, cfg, device, init)
        bx, by = synthetic_batch(case.params.batch, case.params.shape, case.measure.seed)
        bx, by = to_input(bx, cfg, device), by.to(device)

        def base_step():
            with math_mode(cfg, device):  # the process runs the variant's TF32 setting
                return base.step(bx, by)

        for _ in range(1 + case.measure.warmup):
            base_step()
        (base_blocks, var_blocks), during = watched(
            lambda: interleaved(variant_step, base_step, case, device), device
        )
    except Exception as err:  # e.g. OOM with two models resident: the variant's own timing stands
        paired["error"] = f"{type(err).__name__}: {err}"[:500]
        return paired
    paired["baseline_s"] = summarize([t for b in base_blocks for t in b])
    paired["variant_s"] = summarize([t for b in var_blocks for t in b])
    paired["baseline_blocks_s"] = base_blocks
    paired["variant_blocks_s"] = var_blocks
    if during is not None:
        paired["gpu_during"] = during
    # speedup > 1: the variant is faster than the baseline; its interval is over the block pairs
    paired["speedup"] = paired_blocks_ratio_ci(base_blocks, var_blocks)
    return paired
