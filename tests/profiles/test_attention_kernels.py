"""profiles.attention_kernels: which kernel each scaled_dot_product_attention call ran."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from profiles.attention_kernels import count_attention_kernels


def test_fused_and_math_calls_are_told_apart():
    q = torch.randn(2, 3, 16, 8, requires_grad=True)
    bias = torch.randn(1, 3, 16, 16, requires_grad=True)

    def plain():
        F.scaled_dot_product_attention(q, q, q).sum().backward()

    def with_trained_bias():  # the CPU's fused kernel takes no mask that needs a gradient
        F.scaled_dot_product_attention(q, q, q, attn_mask=bias).sum().backward()

    def both_and_a_written_out_one():
        plain()
        with_trained_bias()
        torch.softmax(q @ q.transpose(-1, -2), -1).sum().backward()  # not an SDPA call

    assert count_attention_kernels(plain) == {"flash_cpu": 1}
    assert count_attention_kernels(with_trained_bias) == {"math": 1}
    assert count_attention_kernels(both_and_a_written_out_one) == {"flash_cpu": 1, "math": 1}
    assert count_attention_kernels(lambda: None) == {}


def test_monai_flash_flag_is_inference_only_and_the_fast_path_always_calls_sdpa():
    from bench.config import TrainParams
    from bench.variants import VariantContext, resolve
    from bench.workloads.common import TrainState, synthetic_batch
    from seg.models import build

    torch.manual_seed(0)
    stock = build("swinunetr", preset="paper", feature_size=12, use_flash_attention=True)
    x = torch.randn(1, 4, 64, 64, 64)
    assert count_attention_kernels(lambda: stock(x).sum().backward()) == {}  # training: MONAI's own path
    with torch.no_grad():
        assert sum(count_attention_kernels(lambda: stock(x)).values()) == 8  # 2 blocks x 4 stages

    params = TrainParams(model="swinunetr", model_options={"preset": "paper", "feature_size": 12},
                         shape=[64, 64, 64], batch=1)
    ctx = VariantContext("train_step", "swinunetr", "cpu")
    state = TrainState(params, resolve("swin_fast", ctx), torch.device("cpu"),
                       build("swinunetr", preset="paper", feature_size=12).state_dict())
    image, label = synthetic_batch(1, [64, 64, 64], 0)
    kernels = state.attention_kernels(image, label)
    assert sum(kernels.values()) >= 8  # every block, one call per window group (shifted blocks: several)
    assert all(p.grad is None for p in state.model.parameters())  # the probe leaves no gradients


def test_inference_rows_count_one_windows_kernels_without_autograd():
    """Without autograd the fast path's cached biases need no gradient, so a fused kernel may take
    them (here the CPU's flash kernel; cuDNN on a Hopper GPU with recent PyTorch)."""
    from bench.variants import CaseConfig
    from bench.workloads.infer import _attention_kernels
    from seg.models import build
    from seg.speed import apply_speed_options

    torch.manual_seed(0)
    model = apply_speed_options(build("swinunetr", preset="paper", feature_size=12), fast=True).eval()
    kernels = _attention_kernels(model, CaseConfig(), torch.device("cpu"), [64, 64, 64])
    assert kernels.get("flash_cpu", 0) >= 8 and "math" not in kernels


@pytest.mark.gpu
def test_cuda_fast_path_attention_runs_fused_kernels_in_training_and_inference():
    """The fast path exists to put window attention on a fused kernel: in bf16 training (a bias that
    needs a gradient, the seed's attention dropout) every call must reach one (efficient: flash takes
    no mask, cuDNN no mask that needs a gradient), and none may fall back to the math composite."""
    from seg.models import build
    from seg.speed import apply_speed_options

    torch.manual_seed(0)
    model = apply_speed_options(build("swinunetr", preset="seed", use_checkpoint=False).cuda(), fast=True)
    x = torch.randn(1, 4, 64, 64, 64, device="cuda")

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()

    training = count_attention_kernels(train_step)
    assert "math" not in training and sum(training.values()) >= 8, training
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        inference = count_attention_kernels(lambda: model(x))
    assert "math" not in inference and sum(inference.values()) >= 8, inference


def test_sdpa_priority_order_names_every_kernel_once():
    from profiles.attention_kernels import sdpa_priority_order

    order = sdpa_priority_order("cpu")
    assert order is not None and len(order) == len(set(order))
    assert {"flash", "efficient", "math", "cudnn"} <= set(order)
