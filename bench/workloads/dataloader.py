"""`dataloader`: the input pipeline alone — samples/s and MB/s per loader, worker count, format.

`mb_per_s` counts the bytes of the batches delivered (float32 image, int64 label);
`stored_mb_per_s` the bytes the loader's storage format holds for the samples read.

Times the wait for each batch in the consuming process until it is on the case's device (a CPU
batch's host-to-device copy included, as the device-augmenting loaders' time includes theirs),
after the first batch (worker start-up and the first reads, reported as `first_step_s`) and a
warm-up. `s_per_iter` summarizes the
per-batch waits (median, p20, p80); `samples_per_s` is the steady rate over the measured
batches, total samples / total time = batch / `mean_s_per_batch` (workers deliver in bursts,
so the median wait alone would flatter them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from bench.loaders import LOADERS, LoaderRequest, endless, labelled_ids, storage_fields
from bench.measure import peak_memory, reset_peak_memory, sync_stream
from bench.variants import Unavailable
from bench.workloads.common import Case, apply_backend, torch_device
from reports.stats import summarize


def loader_for(case: Case, batch: int, workers: int, patch, train: bool) -> tuple[Iterator[dict], dict]:
    """An endless batch iterator for the case, and the row fields naming it."""
    if not case.data_dir:
        raise Unavailable("no prepared data (pass --data, or let the suite synthesize its own)")
    name = case.config.loader or case.params.loader
    workers = case.config.workers if case.config.workers is not None else workers
    if name not in LOADERS:
        raise Unavailable(f"no loader {name!r} registered (have {', '.join(sorted(LOADERS))})")
    workers = workers if LOADERS[name].uses_workers else 0
    request = LoaderRequest(
        data_dir=case.data_dir,
        ids=labelled_ids(case.data_dir),
        batch_size=batch,
        workers=workers,
        seed=case.measure.seed,
        patch=patch,
        train=train,
        device=case.device,
        cache_dir=case.cache_dir,
    )
    return endless(LOADERS[name].build(request)), {
        "loader": name,
        "workers": workers,
        "cases": len(request.ids),
        **storage_fields(name, case.data_dir),
    }


def start_up_batches(warmup: int, workers: int) -> int:
    """Batches to take before timing: at least the first wave the workers (DataLoader's prefetch
    factor 2 each) or a prefetcher (depth 2) finish together while the first batch is awaited; timed,
    they would arrive at ~0 s and overstate the steady rate."""
    return max(warmup, 2 * workers + 2)


def wait_ready(batch: dict) -> None:
    """Until a device batch's queued work (copies, augmentation) is done. Only the consuming
    stream: a device-wide sync would also wait for the next batches being prefetched."""
    sync_stream(batch["image"].device)


def batch_bytes(batch: dict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if hasattr(v, "numel"))


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch on `device`: the CPU-augmenting loaders' batches get the copy training gives them,
    so every row times delivery to where the step runs (the device loaders' time includes it)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _timed_next(it: Iterator[dict], device: torch.device) -> Callable[[], tuple[float, dict]]:
    def take() -> tuple[float, dict]:
        start = time.perf_counter()
        batch = to_device(next(it), device)
        wait_ready(batch)
        return time.perf_counter() - start, batch

    return take


def make_step(case: Case):
    device = torch_device(case.device)
    p = case.params
    it, _ = loader_for(case, p.batch, p.workers, p.patch, p.train)
    return (lambda: to_device(next(it), device)), device


def run(case: Case) -> dict:
    device = torch_device(case.device)
    apply_backend(case.config, device)
    p, m = case.params, case.measure
    it, row = loader_for(case, p.batch, p.workers, p.patch, p.train)
    take = _timed_next(it, device)
    row["first_step_s"], first = take()
    row["sample_shape"] = list(first["image"].shape[1:])
    row["warmup_batches"] = start_up_batches(m.warmup, row["workers"])
    for _ in range(row["warmup_batches"]):
        take()
    reset_peak_memory("cpu")  # the loader's memory is host memory, whatever the device
    times, nbytes, samples = [], 0, 0
    for _ in range(m.iters):
        seconds, batch = take()
        times.append(seconds)
        nbytes += batch_bytes(batch)
        samples += batch["image"].shape[0]
    row.update(peak_memory("cpu"))
    row["peak_kind"] = "cpu_peak_rss (consuming process; workers not included)"
    total = sum(times)
    row["s_per_iter"] = summarize(times)
    row["step_times_s"] = times
    row["mean_s_per_batch"] = total / len(times)  # what samples_per_s is made of (batch / mean)
    row["samples_per_s"] = samples / total
    row["mb_per_s"] = nbytes / total / 1e6
    if row["stored_bytes_per_sample"]:
        row["stored_mb_per_s"] = row["samples_per_s"] * row["stored_bytes_per_sample"] / 1e6
    row["batch"] = p.batch
    return row
