"""`train_e2e`: the training step fed by the real data loader, data wait and compute apart.

Per step: the time blocked waiting for the next batch (`data_wait_s`), then host-to-device copy
+ seg.recipe.train_step up to a synchronization (`compute_s`). The verdict says which side sets
the pace: input-bound when the step spends more than `INPUT_BOUND_SHARE` of its time waiting.
"""

from __future__ import annotations

import time

from bench.measure import peak_memory, reset_peak_memory, sync_stream, watched
from bench.workloads.common import Case, TrainState, apply_backend, initial_state, to_input, torch_device
from bench.workloads.dataloader import loader_for, start_up_batches, wait_ready
from profiles.nvtx import nvtx_range
from reports.stats import summarize

INPUT_BOUND_SHARE = 0.10  # waiting more than this share of the step: the loader is the bottleneck


def _setup(case: Case):
    device = torch_device(case.device)
    apply_backend(case.config, device)
    p = case.params
    it, fields = loader_for(case, p.batch, p.workers, p.patch, train=True)
    state = TrainState(p, case.config, device, initial_state(p.model, p.model_options, case.measure.seed))

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        with nvtx_range("data_wait"):
            batch = next(it)
            wait_ready(batch)  # a GPU-side loader's copies and augmentation count as waiting
        arrived = time.perf_counter()
        with nvtx_range("h2d"):
            image, label = (
                to_input(batch["image"], case.config, device),
                batch["label"].to(device, non_blocking=True),
            )
        state.step(image, label)
        # the step's stream only: a device-wide sync would also wait for the prefetcher's side stream
        # (the next batches' copies and augmentation), counting the loader's GPU work as compute
        sync_stream(device)
        if "_shape" not in fields:  # the first step
            fields["_shape"] = list(image.shape[2:])
            fields["_cpu_bf16_workaround"] = state.cpu_bf16_workaround(image)
        return arrived - start, time.perf_counter() - arrived, image.shape[0]  # a last batch may be short

    return step, device, fields


def make_step(case: Case):
    step, device, _ = _setup(case)
    return step, device


def run(case: Case) -> dict:
    p, m = case.params, case.measure
    step, device, row = _setup(case)
    row.update(model=p.model, batch=p.batch, precision=case.config.precision)
    wait, compute, _ = step()
    row["first_step_s"] = wait + compute
    row["warmup_steps"] = start_up_batches(m.warmup, row.get("workers", 0))
    for _ in range(row["warmup_steps"]):
        step()
    reset_peak_memory(device)

    def timed() -> tuple[list[float], list[float], int]:
        waits, computes, samples = [], [], 0
        for _ in range(m.iters):
            wait, compute, n = step()
            waits.append(wait)
            computes.append(compute)
            samples += n
        return waits, computes, samples

    (waits, computes, samples), during = watched(timed, device)
    if during is not None:
        row["gpu_during"] = during
    row.update(peak_memory(device))
    totals = [w + c for w, c in zip(waits, computes, strict=True)]
    row["s_per_iter"] = summarize(totals)
    row["step_times_s"] = totals
    row["data_wait_s"] = summarize(waits)
    row["compute_s"] = summarize(computes)
    row["wait_fraction"] = sum(waits) / sum(totals)
    row["verdict"] = "input-bound" if row["wait_fraction"] > INPUT_BOUND_SHARE else "compute-bound"
    row["samples_per_s"] = samples / sum(totals)
    row["compute_samples_per_s"] = samples / sum(computes)
    row["shape"] = row.pop("_shape")
    if row.pop("_cpu_bf16_workaround"):
        row["cpu_bf16_workaround"] = True
    return row
