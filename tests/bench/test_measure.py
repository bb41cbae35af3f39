"""What the harness times: steps after warm-up, without their untimed setup, and the interleaved
A/B blocks after a dropped first pair (fake steps whose slow calls must stay out of the samples)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from bench.measure import steady_state, time_steps
from bench.workloads.train_step import interleaved


def _step(calls: list, name: str, slow_calls: int, slow_s: float = 0.5):
    """A step that records its calls and sleeps on its first `slow_calls` (compilation, autotuning)."""

    def step() -> None:
        calls.append(name)
        if sum(c == name for c in calls) <= slow_calls:
            time.sleep(slow_s)

    return step


def test_steady_state_times_only_the_steps_after_warm_up():
    calls: list = []
    row = steady_state(_step(calls, "s", slow_calls=2), warmup=2, iters=4, device="cpu")
    assert len(calls) == 6 and len(row["step_times_s"]) == 4 and row["s_per_iter"]["n"] == 4
    assert max(row["step_times_s"]) < 0.25  # (far above a no-op's time even on a loaded machine)


def test_time_steps_leaves_the_setup_out():
    times = time_steps(lambda: None, 3, "cpu", setup=lambda: time.sleep(0.5))
    assert len(times) == 3 and max(times) < 0.25


def test_interleaved_drops_its_first_pair_and_alternates_the_order():
    calls: list = []
    case = SimpleNamespace(measure=SimpleNamespace(block=2, repeats=4))
    # each step is slow for its first block only: the dropped pair must absorb it
    base_step, var_step = _step(calls, "A", slow_calls=2), _step(calls, "B", slow_calls=2)
    base, var = interleaved(var_step, base_step, case, "cpu")
    assert len(base) == len(var) == 4 and all(len(b) == 2 for b in base + var)
    assert calls.count("A") == calls.count("B") == 2 * (4 + 1)
    assert max(t for b in base + var for t in b) < 0.25
    blocks = "".join(calls[::2])  # one letter per block of 2 calls
    assert blocks == "AB" + "AB" + "BA" + "AB" + "BA"  # the dropped pair, then AB BA AB BA


def test_inference_parity_counts_the_voxels_whose_class_differs():
    import torch

    from bench.workloads.infer import probability_parity

    torch.manual_seed(0)
    ref = torch.softmax(torch.randn(1, 4, 4, 4, 5), 1)
    swapped = ref.clone()
    swapped[:, :, :2] = ref[:, [1, 0, 2, 3], :2]  # classes 0 and 1 trade places in 2 of 4 x-slices
    flipped = int((ref.argmax(1)[:, :2] <= 1).sum())  # there, a voxel of class 0 or 1 changes class
    parity = probability_parity(swapped, ref)
    assert flipped > 0 and parity["label_disagreement"] == flipped / (4 * 4 * 5)
    assert parity["max_rel_dev"] > 0 and probability_parity(ref, ref)["label_disagreement"] == 0.0
