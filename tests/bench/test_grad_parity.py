"""Parity checks the first step's gradients: a broken backward that a few small optimizer steps hide
from the loss trajectory shows there."""

import torch

from bench.config import TrainParams
from bench.variants import CaseConfig
from bench.workloads.common import GRAD_SAMPLES_PER_TENSOR, TrainState, grad_rel_dev, initial_state

OPTIONS = {"channels": [4, 8], "strides": [2], "num_res_units": 1}


def _first_step(cfg: CaseConfig, broken=None) -> tuple[float, dict]:
    params = TrainParams(model="unet", model_options=OPTIONS, shape=[16, 16, 16])
    state = TrainState(params, cfg, torch.device("cpu"), initial_state("unet", OPTIONS, 0))
    if broken is not None:
        for p in state.model.parameters():
            p.register_hook(broken)
    gen = torch.Generator().manual_seed(1)
    image, label = torch.rand(1, 4, 16, 16, 16, generator=gen), torch.randint(0, 4, (1, 1, 16, 16, 16),
                                                                               generator=gen)
    grads: dict = {}
    loss = float(state.step(image, label, grads))
    assert not any(p.grad is not None for p in state.model.parameters())  # the optimizer step ran
    return loss, grads


def test_gradient_parity_is_zero_for_the_same_math_and_catches_a_wrong_backward():
    loss, reference = _first_step(CaseConfig(precision="fp32"))
    stored = {name: g.tolist() for name, g in reference.items()}  # as the reference cache holds them
    assert all(0 < len(v) <= GRAD_SAMPLES_PER_TENSOR for v in stored.values())
    same = grad_rel_dev(_first_step(CaseConfig(precision="fp32"))[1], stored)
    assert same == {"grad_rel_dev": 0.0, "grad_tensors": len(stored)}
    bf16 = grad_rel_dev(_first_step(CaseConfig(precision="bf16"))[1], stored)["grad_rel_dev"]
    assert 0 < bf16 < 0.1  # rounding
    negated_loss, negated = _first_step(CaseConfig(precision="fp32"), broken=lambda g: -g)
    assert negated_loss == loss  # the first loss cannot see it
    assert grad_rel_dev(negated, stored)["grad_rel_dev"] > 1.9
    assert "no parameter" in grad_rel_dev({"other": torch.zeros(3)}, stored)["grad_error"]


def test_fp16_gradients_are_unscaled_before_the_comparison():
    _, reference = _first_step(CaseConfig(precision="fp32"))
    stored = {name: g.tolist() for name, g in reference.items()}
    params = TrainParams(model="unet", model_options=OPTIONS, shape=[16, 16, 16])
    init = initial_state("unet", OPTIONS, 0)
    state = TrainState(params, CaseConfig(precision="fp32"), torch.device("cpu"), init)
    state.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # a scaled fp32 step: exact after unscaling
    gen = torch.Generator().manual_seed(1)
    image, label = torch.rand(1, 4, 16, 16, 16, generator=gen), torch.randint(0, 4, (1, 1, 16, 16, 16),
                                                                               generator=gen)
    grads: dict = {}
    state.step(image, label, grads)
    assert grad_rel_dev(grads, stored)["grad_rel_dev"] < 1e-6
