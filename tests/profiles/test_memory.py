"""profiles.memory: the peak replay and its categories, on a hand-made allocator trace (no GPU needed)."""

from __future__ import annotations

import json
import pickle

import pytest

from profiles import memory

MODEL = {"filename": "/work/main/seg/swin_fast/attention.py", "line": 80, "name": "forward_windows"}
DECODER = {
    "filename": "/site-packages/monai/networks/blocks/dynunet_block.py",
    "line": 101,
    "name": "forward",
}
TORCH = {"filename": "/site-packages/torch/nn/modules/module.py", "line": 1, "name": "_call_impl"}
BACKWARD = {"filename": "/site-packages/torch/_tensor.py", "line": 600, "name": "backward"}
STEP = {"filename": "/work/main/bench/workloads/train_step.py", "line": 40, "name": "step"}
ADAM = {"filename": "/site-packages/torch/optim/adamw.py", "line": 300, "name": "_multi_tensor_adamw"}


def _trace():
    events = [
        ("alloc", 0x100, 400, [TORCH, MODEL, STEP]),  # forward activation
        ("alloc", 0x200, 300, [DECODER, STEP]),  # forward activation
        ("free_completed", 0x900, 50, []),  # something allocated before recording
        ("alloc", 0x300, 500, [TORCH, BACKWARD, STEP]),  # backward temporary: the peak
        ("free_completed", 0x100, 400, []),
        ("free_completed", 0x300, 500, []),
        ("alloc", 0x400, 100, [ADAM, STEP]),
    ]
    return {"device_traces": [[dict(action=a, addr=addr, size=s, frames=f) for a, addr, s, f in events]]}


def test_peak_replay_splits_live_memory_by_category_and_site():
    summary = memory.summarize_snapshot(_trace(), baseline_bytes=1000)
    assert summary.peak_bytes == 1000 - 50 + 400 + 300 + 500
    assert summary.peak_event == 3
    assert summary.by_category == {memory.BEFORE: 950, "forward": 700, "backward": 500}
    sites = {site: (size, count) for site, size, count in summary.top_sites}
    assert sites["[forward] swin_fast/attention.py:80 forward_windows"] == (400, 1)
    assert sites["[backward] workloads/train_step.py:40 step"] == (500, 1)
    assert "optimizer" not in summary.by_category  # allocated after the peak
    assert memory.classify([ADAM, STEP])[0] == "optimizer"
    # a custom autograd.Function's forward runs through autograd/function.py: still the forward
    apply = {"filename": "/site-packages/torch/autograd/function.py", "line": 575, "name": "apply"}
    windows = {"filename": "/work/main/seg/swin_fast/windows.py", "line": 40, "name": "forward"}
    assert memory.classify([windows, apply, MODEL, STEP])[0] == "forward"
    engine = {"filename": "/site-packages/torch/autograd/graph.py", "line": 8, "name": "_engine_run_backward"}
    assert memory.classify([windows, apply, engine, BACKWARD, STEP])[0] == "backward"
    # on CUDA the backward runs on autograd's thread: no Python frames, or a custom Function's
    # backward called from C++ (its outermost frame is Function.apply)
    assert memory.classify([])[0] == "backward"
    backward = {"filename": "/work/main/seg/swin_fast/windows.py", "line": 50, "name": "backward"}
    assert memory.classify([backward, apply])[0] == "backward"
    assert "GiB" in memory.format_summary(summary)


def test_cli_reads_a_pickle_and_names_a_bad_file(tmp_path, capsys):
    good = tmp_path / "memory.pickle"
    good.write_bytes(pickle.dumps(_trace()))
    assert memory.main([str(good), "--baseline-bytes", "1000"]) == 0
    assert "backward" in capsys.readouterr().out
    bad = tmp_path / "truncated.pickle"
    bad.write_bytes(pickle.dumps(_trace())[:20])
    with pytest.raises(SystemExit) as exc:
        memory.main([str(bad)])
    assert exc.value.code == 1
    assert "truncated.pickle" in capsys.readouterr().err
    other = tmp_path / "list.pickle"  # a pickle, but not a snapshot
    other.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(SystemExit) as exc:
        memory.main([str(other)])
    assert exc.value.code == 1 and "list.pickle: cannot summarize memory snapshot: not a CUDA" in \
        capsys.readouterr().err


def test_a_block_counts_as_freed_when_its_free_is_requested_as_memory_allocated_counts_it():
    """A block used on a side stream (record_stream) completes its free later; the allocator's
    allocated bytes, and so the peak, drop at the request."""
    events = [("alloc", 0x1, 1000, [MODEL, STEP]), ("free_requested", 0x1, 1000, []),
              ("alloc", 0x2, 1000, [MODEL, STEP]), ("free_completed", 0x1, 1000, []),
              ("free_requested", 0x900, 50, []), ("free_completed", 0x900, 50, []),  # from before recording
              ("alloc", 0x1, 300, [MODEL, STEP])]  # the address again, after its free completed
    trace = {"device_traces": [[dict(action=a, addr=addr, size=s, frames=f) for a, addr, s, f in events]]}
    summary = memory.summarize_snapshot(trace, baseline_bytes=100)
    assert summary.peak_bytes == 100 + 1000 - 50 + 300 and summary.peak_event == 6
    assert summary.by_category == {memory.BEFORE: 50, "forward": 1300}


def test_cli_takes_the_baseline_from_the_json_beside_the_snapshot(tmp_path, capsys):
    snapshot = tmp_path / "memory_snapshot.pickle"
    snapshot.write_bytes(pickle.dumps(_trace()))
    assert memory.main([str(snapshot)]) == 0
    assert "not in the peak" in capsys.readouterr().out  # no baseline: said so
    memory.baseline_path(snapshot).write_text('{"baseline_bytes": 1000, "peak_bytes": 2200}')
    assert memory.main([str(snapshot)]) == 0
    out = capsys.readouterr().out
    assert f"{(1000 - 50 + 400 + 300 + 500) / 2**30:8.3f} GiB" in out and "not in the peak" not in out


@pytest.mark.gpu
def test_records_a_cuda_step(tmp_path):
    import torch

    layer = torch.nn.Linear(256, 256).cuda()
    with memory.record_memory_history(tmp_path / "step.pickle") as rec:
        layer(torch.randn(4096, 256, device="cuda")).square().sum().backward()
    summary = memory.summarize_snapshot(rec.snapshot, rec.baseline_bytes)
    assert (tmp_path / "step.pickle").is_file()
    sidecar = json.loads(memory.baseline_path(tmp_path / "step.pickle").read_text())
    assert sidecar["baseline_bytes"] == rec.baseline_bytes > 0  # the layer's weights
    assert summary.by_category.get("forward", 0) > 0
    assert abs(summary.peak_bytes - rec.peak_bytes) <= 0.1 * rec.peak_bytes


def test_an_allocation_under_the_optimizer_s_frames_is_the_optimizer_s():
    from profiles.memory import classify

    frames = [{"filename": "/venv/lib/torch/utils/_foreach_utils.py", "name": "_group_tensors", "line": 1},
              {"filename": "/venv/lib/torch/optim/adamw.py", "name": "_multi_tensor_adamw", "line": 2},
              {"filename": "/work/seg/recipe.py", "name": "optimizer_step", "line": 3}]
    assert classify(frames)[0] == "optimizer"
