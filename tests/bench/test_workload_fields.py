"""The arithmetic of the loader and kernel workloads' row fields, on stubbed loaders and steps: warm-up
batches really taken, bytes per batch, the bytes a norm kernel must move, parity of both its outputs."""

from __future__ import annotations

import pytest
import torch


def _fake_batches(counter):
    while True:
        counter.append(1)
        yield {
            "image": torch.zeros(2, 4, 4, 4, 4),
            "label": torch.zeros(2, 1, 4, 4, 4, dtype=torch.long),
            "id": ["a", "b"],
        }


def test_dataloader_times_after_the_workers_first_wave_and_counts_label_bytes(monkeypatch):
    from bench.config import LoaderParams, Measure
    from bench.variants import CaseConfig
    from bench.workloads import dataloader
    from bench.workloads.common import Case

    taken: list = []
    fields = {"loader": "x", "workers": 2, "cases": 2, "format": "pt32", "stored_bytes_per_sample": None}
    monkeypatch.setattr(dataloader, "loader_for", lambda *a: (_fake_batches(taken), dict(fields)))
    case = Case(
        suite="t",
        workload="d",
        kind="dataloader",
        variant="v",
        device="cpu",
        params=LoaderParams(batch=2, workers=2),
        config=CaseConfig(),
        measure=Measure(warmup=0, iters=3),
    )
    row = dataloader.run(case)
    assert row["warmup_batches"] == 6 and len(taken) == 1 + 6 + 3  # warm-up really taken
    per_batch = 2 * 4 * 64 * 4 + 2 * 64 * 8  # float32 image + int64 label
    assert dataloader.batch_bytes(next(_fake_batches([]))) == per_batch
    assert row["mb_per_s"] == pytest.approx(3 * per_batch / sum(row["step_times_s"]) / 1e6)


def test_train_e2e_takes_its_warmup_steps(monkeypatch):
    from bench.config import E2EParams, Measure
    from bench.variants import CaseConfig
    from bench.workloads import train_e2e
    from bench.workloads.common import Case

    calls: list = []

    def setup(case):
        fields = {"workers": 2, "_shape": [8, 8, 8], "_cpu_bf16_workaround": False}
        return (lambda: calls.append(1) or (0.01, 0.1, 2)), torch.device("cpu"), fields

    monkeypatch.setattr(train_e2e, "_setup", setup)
    case = Case(
        suite="t",
        workload="e",
        kind="train_e2e",
        variant="fp32",
        device="cpu",
        params=E2EParams(batch=2),
        config=CaseConfig(),
        measure=Measure(warmup=0, iters=4),
    )
    row = train_e2e.run(case)
    assert row["warmup_steps"] == 6 and len(calls) == 1 + 6 + 4


def _norm_case(**measure):
    from bench.config import Measure, NormParams
    from bench.variants import CaseConfig
    from bench.workloads.common import Case

    return Case(
        suite="t",
        workload="n",
        kind="norm_kernel",
        variant="fp32",
        device="cpu",
        params=NormParams(shape=[1, 2, 4, 4, 4]),
        config=CaseConfig(),
        measure=Measure(**{"warmup": 0, "iters": 3, "parity_steps": 1, **measure}),
        calibration={"copy_bytes_per_s": 1e9},
    )


def test_norm_kernel_counts_the_bytes_that_must_move():
    from bench.workloads import norm_kernel

    row = norm_kernel.run(_norm_case())
    nbytes = 2 * 64 * 4
    assert row["forward_gb_per_s"] * row["forward_s"]["median"] == pytest.approx(2 * nbytes / 1e9)
    assert row["backward_gb_per_s"] * row["backward_s"]["median"] == pytest.approx(3 * nbytes / 1e9)
    assert row["fraction_of_copy"] * row["s_per_iter"]["median"] == pytest.approx(5 * nbytes / 1e9)


def test_norm_kernel_parity_sees_a_wrong_input_gradient():
    from bench.workloads import norm_kernel

    eager = norm_kernel._eager(0.01, 1e-5)

    class DoubledGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    def wrong_backward(x, w, b):  # right forward, dx twice what it should be
        return eager(DoubledGrad.apply(x), w, b)

    case = _norm_case()
    x, dy, w, b = norm_kernel._inputs(case, torch.device("cpu"), torch.float32, False)
    parity = norm_kernel._parity(case, wrong_backward, x, dy, w, b)
    assert parity["y_rel_l2"] < 1e-6 and parity["dx_rel_l2"] > 0.5
    assert parity["max_rel_dev"] == parity["dx_rel_l2"]


@pytest.mark.parametrize("device, pinned", [("cuda", True), ("cpu", False)])
def test_seed_loader_pins_host_memory_for_a_cuda_consumer(monkeypatch, tmp_path, device, pinned):
    import seg.data.loaders
    from bench.loaders import LOADERS, LoaderRequest

    seen = {}
    monkeypatch.setattr(seg.data.loaders, "build_loader", lambda *a, **kw: seen.update(kw) or [])
    req = LoaderRequest(
        data_dir=tmp_path, ids=["a"], batch_size=1, workers=0, seed=0, patch=None, train=True, device=device
    )
    LOADERS["default"].build(req)
    assert seen["pin_memory"] is pinned
