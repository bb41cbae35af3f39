"""kernels.patch on real MONAI networks: same state_dict, same loss and gradients as the eager model.

Channel counts are cut down and volumes are 32³ (16³ for the second DynUNet) so the Triton
interpreter stays quick; the module trees are MONAI's own.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from monai.networks.nets import DynUNet, SwinUNETR, UNet
from torch import nn

import kernels


def _loss_and_grads(model, x, target):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _check_patched_training(model, x, *kinds: str):
    """Every module of `kinds` holding a norm gets fused; loss and gradients match the eager model."""
    def has_norm(m):
        return any("norm" in type(c).__name__.lower() for c in m.children())

    expected = [n for n, m in model.named_modules() if type(m).__name__ in kinds and has_norm(m)]
    assert expected
    torch.manual_seed(0)
    target = torch.randint(0, 4, (x.shape[0], *x.shape[2:]), device=x.device)
    state = copy.deepcopy(model.state_dict())
    loss_ref, grads_ref = _loss_and_grads(model, x, target)

    assert kernels.patch(model) is model
    assert kernels.patched_modules(model) == expected
    assert _same_state(model.state_dict(), state), "patching changed the state_dict"

    loss, grads = _loss_and_grads(model, x, target)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    scale = max(g.abs().max().item() for g in grads_ref.values())
    worst = max((grads[n] - grads_ref[n]).abs().max().item() for n in grads_ref)
    assert worst <= 1e-4 * scale, f"gradients differ by {worst:.3g} (largest gradient {scale:.3g})"

    kernels.unpatch(model)
    assert kernels.patched_modules(model) == []
    assert _loss_and_grads(model, x, target)[0] == pytest.approx(loss_ref, rel=1e-6)


def test_unet_instance_norm_prelu(triton_backend):
    torch.manual_seed(1)
    model = UNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(4, 8, 16), strides=(2, 2),
                 num_res_units=2, norm="instance", act="PRELU").to(triton_backend)
    assert not model.model[0].conv.unit0.adn.N.affine  # MONAI UNet: InstanceNorm without affine
    x = torch.randn(1, 4, 32, 32, 32, device=triton_backend)
    _check_patched_training(model, x, "ADN")


def test_dynunet_basic_blocks(triton_backend):
    torch.manual_seed(2)
    model = DynUNet(3, 4, 4, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2] * 3,
                    filters=[4, 8, 12, 16], norm_name="instance",
                    act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01})).to(triton_backend)
    x = torch.randn(1, 4, 32, 32, 32, device=triton_backend)
    _check_patched_training(model, x, "UnetBasicBlock")


def test_dynunet_res_blocks_affine(triton_backend):
    # UnetResBlock: norm2 + residual (conv3 + norm3 path when shapes change) + activation in one kernel.
    torch.manual_seed(3)
    model = DynUNet(3, 4, 4, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2] * 2,
                    filters=[4, 8, 8], norm_name=("instance", {"affine": True}), res_block=True,
                    act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01})).to(triton_backend)
    for p in model.parameters():  # move affine params off their (1, 0) init so the test sees them
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 4, 16, 16, 16, device=triton_backend)
    _check_patched_training(model, x, "UnetResBlock", "UnetBasicBlock")  # up path: basic


def test_swinunetr_decoder_blocks_and_layer_norms(triton_backend):
    # The whole net needs 64³ (32x downsampling): too slow for the interpreter, so patch the whole
    # model and check its state_dict and coverage, then compare real sub-blocks on small inputs.
    torch.manual_seed(4)
    model = SwinUNETR(in_channels=4, out_channels=4, feature_size=12).to(triton_backend)
    eager = copy.deepcopy(model)
    state = copy.deepcopy(model.state_dict())
    kernels.patch(model)
    assert _same_state(model.state_dict(), state)
    names = kernels.patched_modules(model)
    layer_norms = [n for n, m in eager.named_modules() if type(m) is nn.LayerNorm]
    res_blocks = [n for n, m in eager.named_modules() if type(m).__name__ == "UnetResBlock"]
    assert sorted(names) == sorted(layer_norms + res_blocks)

    swin_block = "swinViT.layers1.0.blocks.0"
    tokens = torch.randn(1, 4, 4, 4, 12, device=triton_backend)  # (b, d, h, w, c), one 7³-clipped window
    mask = None
    low = torch.randn(1, 24, 4, 4, 4, device=triton_backend)
    skip = torch.randn(1, 12, 8, 8, 8, device=triton_backend)
    image = torch.randn(1, 4, 8, 8, 8, device=triton_backend)
    for name, inputs in ((swin_block, (tokens, mask)), ("decoder2", (low, skip)), ("encoder1", (image,))):
        fused, ref = model.get_submodule(name), eager.get_submodule(name)
        outs = []
        for m in (ref, fused):
            leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
            y = m(*leaves)
            y.square().mean().backward()
            outs.append((y.detach(), [t.grad for t in leaves if t is not None]))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5, msg=name)
        for g, g_ref in zip(outs[1][1], outs[0][1], strict=True):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_adn_dropout_between_norm_and_activation(triton_backend, layout):
    # N -> Dropout(0.4) -> PReLU in train mode: the fused op applies dropout after the activation,
    # which is exact for positively homogeneous activations and draws the same random mask — for a
    # channels-last input too (eager's norm returns it contiguous, and dropout's mask follows memory order)
    # (dropout_dim 1: element-wise masks, as MONAI's UNet makes them; 3 drops whole channels)
    adn = ADN(ordering="NDA", in_channels=5, act="PRELU", norm="instance", norm_dim=3, dropout=0.4,
              dropout_dim=1)
    adn = adn.to(triton_backend).train()
    patched = kernels.patch(adn, copy=True)
    assert kernels.patched_modules(adn) == [] and kernels.patched_modules(patched) == [""]
    x = torch.randn(2, 5, 6, 5, 7, device=triton_backend).to(memory_format=layout)
    outs = []
    for m in (adn, patched):
        torch.manual_seed(7)
        leaf = x.clone().requires_grad_()
        y = m(leaf)
        y.sum().backward()
        outs.append((y.detach(), leaf.grad, m.A.weight.grad))
    assert (outs[0][0] == 0).float().mean() > 0.2  # dropout really dropped
    for got, ref in zip(outs[1], outs[0], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_unsupported_norms_stay_eager():
    block = UnetBasicBlock(3, 4, 6, kernel_size=3, stride=1, norm_name="batch")
    kernels.patch(block)
    assert kernels.patched_modules(block) == []
    ln2d = nn.LayerNorm([4, 4])  # normalizes two dims: not what layer_norm fuses
    assert kernels.patched_modules(kernels.patch(nn.Sequential(ln2d))) == []
    # a fusable norm whose activation is not: the block would only carry the Fused name
    mish = UNet(3, 4, 4, channels=(4, 8), strides=(2,), num_res_units=0, act="mish", norm="instance")
    assert kernels.patched_modules(kernels.patch(mish)) == []


def test_patch_is_idempotent_and_checkpoints_load_across(triton_backend):
    model = DynUNet(3, 4, 4, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2] * 2,
                    filters=[4, 8, 8], norm_name=("instance", {"affine": True}))
    patched = kernels.patch(kernels.patch(model, copy=True))
    assert len(kernels.patched_modules(patched)) == sum(type(m) is UnetBasicBlock for m in model.modules())
    assert all(type(m).__name__.count("Fused") <= 1 for m in patched.modules())
    with torch.no_grad():
        for p in patched.parameters():
            p.add_(torch.randn_like(p))
    model.load_state_dict(patched.state_dict())  # strict: same keys
    assert _same_state(model.state_dict(), patched.state_dict())
    patched.load_state_dict(kernels.unpatch(copy.deepcopy(patched)).state_dict())


def test_a_patched_model_pickles_and_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    model = DynUNet(3, 4, 4, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2] * 2,
                    filters=[4, 8, 8], norm_name=("instance", {"affine": True}))
    kernels.patch(model)
    torch.save(model, tmp_path / "model.pt")  # whole module, as MONAI bundles sometimes do
    code = ("import torch, kernels; m = torch.load(r'%s', weights_only=False); "
            "print(len(kernels.patched_modules(m)), type(m.input_block).__name__)" % (tmp_path / "model.pt"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(len(kernels.patched_modules(model))), "FusedUnetBasicBlock"]


def test_a_block_recomputed_after_patching_counts_as_patched_and_unpatch_says_why_not():
    from seg.recompute import recompute

    model = DynUNet(3, 4, 4, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2] * 2,
                    filters=[4, 8, 8], norm_name=("instance", {"affine": True}))
    kernels.patch(model)
    before = kernels.patched_modules(model)
    recompute(model, ["input_block"])
    assert kernels.patched_modules(model) == before
    with pytest.raises(ValueError, match="input_block .*was wrapped after patching"):
        kernels.unpatch(model)
    assert kernels.patched_modules(model) == before  # refused before changing anything


def test_patching_after_recompute_is_refused_not_skipped():
    from seg.recompute import recompute

    model = DynUNet(3, 4, 4, kernel_size=[3] * 3, strides=[1, 2, 2], upsample_kernel_size=[2] * 2,
                    filters=[4, 8, 8], norm_name=("instance", {"affine": True}))
    recompute(model, ["input_block"])
    with pytest.raises(ValueError, match=r"input_block \(UnetBasicBlock\) is checkpointed .*patch the model "
                                         "first"):
        kernels.patch(model)
    assert kernels.patched_modules(model) == []


def _basic_block(norm_name, slope=0.01) -> UnetBasicBlock:
    torch.manual_seed(0)
    return UnetBasicBlock(3, 4, 8, kernel_size=3, stride=1, norm_name=norm_name,
                          act_name=("leakyrelu", {"inplace": True, "negative_slope": slope}))


@pytest.mark.parametrize("norm_name, slope", [(("group", {"num_groups": 2}), 0.01),
                                              (("instance", {"affine": True}), 0.3)])
def test_a_patched_block_keeps_group_norm_s_groups_and_the_block_s_slope(norm_name, slope):
    block = _basic_block(norm_name, slope)
    x = torch.randn(2, 4, 6, 6, 6)
    with torch.no_grad():
        ref = block(x)
        kernels.patch(block)
        assert kernels.patched_modules(block) == [""]
        torch.testing.assert_close(block(x), ref, rtol=1e-4, atol=1e-4)


def test_instance_norm_with_running_stats_stays_eager():
    # in eval it normalizes by its running statistics, which the fused kernel does not keep
    block = _basic_block(("instance", {"track_running_stats": True}))
    assert kernels.patched_modules(kernels.patch(block)) == []
