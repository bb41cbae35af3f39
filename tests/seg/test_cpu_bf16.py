"""The guard for oneDNN's wrong bf16 conv3d weight gradients on 2-voxel-wide maps (seg.cpu_bf16).

On an affected CPU (this project's CI machine is one) the unguarded gradients are off by 1e30 or
non-finite; on an unaffected CPU the guard does nothing and the same assertions hold.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from seg import cpu_bf16, recipe


def test_guard_gives_the_right_bf16_conv3d_weight_gradient():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 2, 2, 2)
    conv = nn.Conv3d(32, 32, 3, padding=1, bias=False)
    with cpu_bf16.guard("bf16", conv, x), torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x).float().square().sum().backward()
    w64 = conv.weight.detach().bfloat16().double().requires_grad_()
    F.conv3d(x.bfloat16().double(), w64, padding=1).square().sum().backward()
    assert torch.isfinite(conv.weight.grad).all()
    assert (conv.weight.grad.double() - w64.grad).norm() / w64.grad.norm() < 0.02


def test_two_wide_maps_are_found_by_shape_through_wrappers():
    from monai.networks.nets import UNet

    net = UNet(3, 4, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=2)
    assert cpu_bf16.has_two_wide_conv(net, torch.zeros(1, 4, 8, 8, 8))  # 8 -> 4 -> 2
    assert not cpu_bf16.has_two_wide_conv(net, torch.zeros(1, 4, 16, 16, 16))  # deepest 4³
    # through torch.compile's wrapper (not compiled by the probe), without touching the weights
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert cpu_bf16.has_two_wide_conv(torch.compile(net), torch.zeros(1, 4, 8, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.training
    strided = nn.Sequential(nn.Conv3d(4, 32, 3, stride=2, padding=1), nn.Conv3d(32, 32, 1))
    assert not cpu_bf16.has_two_wide_conv(strided, torch.zeros(1, 4, 4, 4, 4))  # right at 2³


@pytest.mark.parametrize("bug", [True, False])  # both answers of the probe, whatever this CPU's is
def test_only_real_bf16_cpu_steps_are_guarded(monkeypatch, bug):
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(cpu_bf16, "conv3d_weight_grad_ok", lambda: not bug)
    x = torch.zeros(1)
    assert not cpu_bf16.affected("fp32", x) and not cpu_bf16.affected("bf16", torch.zeros(1, device="meta"))
    with FakeTensorMode() as mode:  # footprint estimates emulate CUDA on fake CPU tensors
        assert not cpu_bf16.affected("bf16", mode.from_tensor(x))
    assert cpu_bf16.affected("bf16", x) == bug


def test_bf16_training_step_through_a_2_voxel_bottleneck_matches_fp32():
    """MONAI's UNet on 8³ reaches a 2³ bottleneck with 32 channels: the NaN of session 2."""
    from monai.networks.nets import UNet

    def grads(precision: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = UNet(3, 4, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=2)
        x = torch.rand(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 4, (1, 1, 8, 8, 8), generator=torch.Generator().manual_seed(2))
        scaler = recipe.make_scaler(precision, "cpu")
        recipe.forward_backward(model, x, y, recipe.build_loss(), scaler, precision)
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    fp32, bf16 = grads("fp32"), grads("bf16")
    # the bottleneck's conv weights are among them (32 channels on a 2³ map)
    assert any(g.shape[:2] == (32, 32) and g.dim() == 5 for g in fp32.values())
    # bf16 all the way through an untrained net moves conv weight gradients by ~20 % (measured:
    # 0.01-0.21); the bug moves them by 1e30 or makes them inf. (Conv biases before InstanceNorm
    # have a true gradient of ~0, so no relative error means anything for them.)
    for name, want in fp32.items():
        got = bf16[name]
        assert torch.isfinite(got).all(), name
        if want.dim() == 5:
            assert (got - want).norm() / want.norm() < 0.5, name


def test_the_shape_probe_leaves_no_fake_tensor_in_the_fast_swin_caches():
    """The probe's fake forward once poisoned the fast path's eval-mode bias cache (keyed by the
    real parameters): the next real validation forward returned fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

    from seg.models import build

    torch.manual_seed(0)
    model = build("swinunetr", fast=True, use_checkpoint=False, feature_size=12)
    x = torch.rand(1, 4, 64, 64, 64)
    assert cpu_bf16.has_two_wide_conv(model, x)  # 64 / 32 = 2
    # the same with real parameters under an ambient fake mode (how the bug first showed)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
        model.eval()(mode.from_tensor(x))
    with torch.no_grad():
        y = model.eval()(x)
    assert not is_fake(y) and torch.isfinite(y).all()
    caches = [m._bias_cache for m in model.modules() if hasattr(m, "_bias_cache")]
    assert caches and not any(is_fake(t) for c in caches for biases in c.values() for t in biases)


def test_probe_covers_non_persistent_buffers_and_assumes_the_worst_when_fakes_cannot_run():
    class Net(nn.Module):
        def __init__(self, data_dependent: bool):
            super().__init__()
            self.conv = nn.Conv3d(4, 32, 3, padding=1)
            self.register_buffer("scale", torch.ones(1), persistent=False)
            self.data_dependent = data_dependent

        def forward(self, x):
            if self.data_dependent:
                x = x[:, :, : int((x > 0).sum().clamp(max=2))]  # a shape that depends on the data
            return self.conv(x) * self.scale

    assert cpu_bf16.has_two_wide_conv(Net(False), torch.zeros(1, 4, 2, 2, 2))
    assert not cpu_bf16.has_two_wide_conv(Net(False), torch.zeros(1, 4, 4, 4, 4))
    assert cpu_bf16.has_two_wide_conv(Net(True), torch.zeros(1, 4, 4, 4, 4))  # could not look: guard


def test_the_probe_gives_back_the_real_weights_of_blocks_registered_twice():
    """DynUNet holds its blocks again under skip_layers: torch.func.functional_call left fakes in
    them, and the next bf16 training step ran on fake weights."""
    from torch._subclasses.fake_tensor import FakeTensor

    from seg.models import build

    model = build("dynunet", filters=[8, 16, 32], kernel_size=[3] * 3, strides=[1, 2, 2],
                  upsample_kernel_size=[2] * 2)
    tensors = [*model.parameters(), *model.buffers()]
    owners = {name: (id(m), dict(m._parameters)) for name, m in model.named_modules(remove_duplicate=False)}
    assert cpu_bf16.has_two_wide_conv(model, torch.zeros(1, 4, 8, 8, 8))
    assert all(a is b for a, b in zip([*model.parameters(), *model.buffers()], tensors, strict=True))
    for name, m in model.named_modules(remove_duplicate=False):
        assert owners[name] == (id(m), dict(m._parameters)), name
    y = model(torch.randn(1, 4, 16, 16, 16))
    assert not isinstance(y, FakeTensor) and torch.isfinite(y).all()


def test_the_shape_probe_leaves_an_eval_model_in_eval_mode():
    from seg import cpu_bf16

    model = nn.Sequential(nn.Conv3d(2, 2, 3, padding=1)).eval()
    assert cpu_bf16.has_two_wide_conv(model, torch.zeros(1, 2, 2, 2, 2))
    assert not model.training
