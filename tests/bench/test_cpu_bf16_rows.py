"""Harness rows say when a bf16 CPU step ran with oneDNN off (seg.cpu_bf16's workaround)."""

import pytest
import torch

from bench.config import TrainParams
from bench.variants import CaseConfig
from bench.workloads.common import TrainState, initial_state
from seg import cpu_bf16


@pytest.mark.parametrize("bug", [True, False])  # both answers of the probe, whatever this CPU's is
def test_train_state_reports_the_workaround_by_shape_and_precision(monkeypatch, bug):
    monkeypatch.setattr(cpu_bf16, "conv3d_weight_grad_ok", lambda: not bug)
    options = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 2}
    params = TrainParams(model="unet", model_options=options, shape=[8, 8, 8])
    init = initial_state("unet", options, 0)
    bf16 = TrainState(params, CaseConfig(precision="bf16"), torch.device("cpu"), init)
    fp32 = TrainState(params, CaseConfig(precision="fp32"), torch.device("cpu"), init)
    assert bf16.cpu_bf16_workaround(torch.zeros(1, 4, 8, 8, 8)) == bug  # 8 -> 4 -> 2: a 2³ bottleneck
    assert not bf16.cpu_bf16_workaround(torch.zeros(1, 4, 16, 16, 16))  # deepest map 4³
    assert not fp32.cpu_bf16_workaround(torch.zeros(1, 4, 8, 8, 8))


def test_cuda_cases_autotune_cudnn_as_training_does(monkeypatch):
    # bench cases time what seg.train / seg.infer run: cuDNN's algorithm search on (flags only: no GPU here)
    from bench.workloads.common import apply_backend

    for flag in ("benchmark", "allow_tf32"):
        monkeypatch.setattr(torch.backends.cudnn, flag, False)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32  # by hand: monkeypatch cannot undo cuBLAS's flags
    try:
        apply_backend(CaseConfig(), torch.device("cpu"))
        assert not torch.backends.cudnn.benchmark
        apply_backend(CaseConfig(), torch.device("cuda"))
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
