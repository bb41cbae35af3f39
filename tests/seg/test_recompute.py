"""seg.recompute: selective activation checkpointing of named submodules."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from seg.models import build
from seg.recompute import match_modules, recompute, recomputed_modules, unrecompute
from seg.speed import COMPILE_BACKEND_ENV, SpeedOptionError, apply_speed_options

TINY_DYN = dict(filters=[8, 16, 32], kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2])


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Output, parameter gradients, and the bytes autograd saved for backward during the forward."""
    torch.manual_seed(1)  # the same dropout draws for every model
    saved_bytes = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved_bytes
        saved_bytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    y.square().mean().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, saved_bytes


def test_fast_swinunetr_full_resolution_blocks_recompute_the_same_step_with_less_saved():
    """The seed preset's dropout is on: the recomputation draws the same masks (RNG restored)."""
    torch.manual_seed(0)
    plain = apply_speed_options(build("swinunetr", preset="seed", feature_size=12, use_checkpoint=False),
                                fast=True)
    chosen = copy.deepcopy(plain)
    names = recompute(chosen, ["encoder1", "decoder1"])
    assert names == recomputed_modules(chosen) == ["encoder1", "decoder1"]
    assert list(chosen.state_dict()) == list(plain.state_dict())
    x = torch.randn(1, 4, 64, 64, 64)  # edges divisible by 32, > 1 voxel at the 1/32 bottleneck
    y_plain, g_plain, saved_plain = _step(plain, x)
    y_chosen, g_chosen, saved_chosen = _step(chosen, x)
    torch.testing.assert_close(y_chosen, y_plain, rtol=0, atol=0)
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_chosen[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    # encoder1 + decoder1 keep ~20 full-resolution maps of 12 channels between them; only their
    # inputs stay (fp32, 64^3 x 12 channels: 12 MiB per map).
    full_res_map = 12 * 64**3 * 4
    assert saved_plain - saved_chosen > 10 * full_res_map
    with torch.no_grad():  # inference runs the plain forward
        torch.testing.assert_close(chosen.eval()(x), plain.eval()(x), rtol=0, atol=0)
    unrecompute(chosen)
    assert recomputed_modules(chosen) == [] and type(chosen.encoder1) is type(plain.encoder1)


def test_patterns_select_the_outermost_modules_and_bad_ones_are_named():
    model = build("dynunet", **TINY_DYN)
    assert match_modules(model, ["upsamples.*", "upsamples.0.conv_block"]) == ["upsamples.0", "upsamples.1"]
    assert match_modules(model, ["input_block", "input_block.conv1"]) == ["input_block"]
    with pytest.raises(ValueError, match=r"'decoder1' names no submodule of DynUNet \(top-level modules: .*"
                                         r"input_block"):
        recompute(model, ["decoder1"])
    with pytest.raises(ValueError, match="upsamples \\(ModuleList\\) has no forward of its own"):
        recompute(model, ["upsamples"])
    # backward would fail with "modified by an inplace operation" (DynUNet's LeakyReLUs are in place)
    with pytest.raises(ValueError, match=r"input_block.lrelu \(LeakyReLU\) works in place on its input"):
        recompute(model, ["*.lrelu"])
    # the recomputation would update the running statistics a second time
    batch = build("dynunet", **TINY_DYN, norm_name="batch")
    with pytest.raises(ValueError, match=r"input_block \(UnetBasicBlock\) holds norm running "
                                         r"statistics \(input_block.norm1, input_block.norm2\)"):
        recompute(batch, ["input_block"])
    tracked = build("dynunet", **TINY_DYN,
                    norm_name=("instance", {"affine": True, "track_running_stats": True}))
    with pytest.raises(ValueError, match=r"holds norm running statistics \(input_block.norm1"):
        recompute(tracked, ["input_block"])  # instance norm keeps them too: momentum applied twice
    assert recomputed_modules(model) == recomputed_modules(batch) == []  # a refused call changes nothing
    swin = apply_speed_options(build("swinunetr", preset="paper", feature_size=12), fast=True)
    with pytest.raises(SpeedOptionError, match="runs through forward_tokens.*use_checkpoint"):
        apply_speed_options(swin, checkpoint_modules=("swinViT.layers1.0.blocks.0",))


def test_compiled_step_with_recomputed_blocks_matches_eager_without_graph_breaks(monkeypatch):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")  # dynamo + AOTAutograd, no C++ compile
    torch.manual_seed(0)
    eager = build("dynunet", **TINY_DYN)
    compiled = copy.deepcopy(eager)
    compiled = apply_speed_options(compiled, compile_mode="default", checkpoint_modules=("input_block",))
    x = torch.randn(1, 4, 16, 16, 16)
    explained = torch._dynamo.explain(compiled._orig_mod)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    y_eager, g_eager, _ = _step(eager, x)
    y_compiled, g_compiled, _ = _step(compiled, x)
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-6)
    for name, grad in g_eager.items():
        torch.testing.assert_close(g_compiled["_orig_mod." + name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_footprint_estimate_drops_with_the_full_resolution_block_recomputed():
    """The harness variant `ckpt:NAMES` reaches the footprint workload (after the fused norms)."""
    from bench.config import FootprintParams, Measure
    from bench.variants import VariantContext, resolve
    from bench.workloads import footprint
    from bench.workloads.common import Case

    ctx = VariantContext(kind="footprint", model="dynunet", device="cpu")
    params = FootprintParams(model="dynunet", model_options=TINY_DYN, shape=[32, 32, 32], batch=1)

    def peak(variant: str) -> int:
        case = Case("t", "dyn", "footprint", variant, "cpu", params, resolve(variant, ctx), Measure())
        return footprint.run(case)["estimated_bytes_by_category"]["Activation"]

    full_res_map = 8 * 32**3 * 2  # bf16, the input block's 8 channels
    assert peak("bf16") - peak("bf16+ckpt:input_block") > 2 * full_res_map


def test_a_recomputed_model_pickles_and_loads_in_a_fresh_process(tmp_path):
    """torch.save(model) names importable classes (not the wrappers made at run time), also for blocks
    recomputed after kernels.patch fused them; the loaded models compute the same step."""
    import subprocess
    import sys

    import kernels

    saved = {}
    for patched in (False, True):
        torch.manual_seed(0)
        model = build("dynunet", **TINY_DYN)
        if patched:
            kernels.patch(model)
        recompute(model, ["input_block", "upsamples.*"])
        clone = copy.deepcopy(model)
        assert recomputed_modules(clone) == recomputed_modules(model)
        assert kernels.patched_modules(clone) == kernels.patched_modules(model)
        x = torch.randn(1, 4, 16, 16, 16)
        y, grads, _ = _step(model, x)
        saved[patched] = {"model": model, "x": x, "y": y, "grads": grads}
    torch.save(saved, tmp_path / "models.pt")
    code = f"""
import torch, kernels
from seg.recompute import recomputed_modules
for case in torch.load(r"{tmp_path / 'models.pt'}", weights_only=False).values():
    m = case["model"]
    torch.manual_seed(1)
    y = m(case["x"])
    y.square().mean().backward()
    torch.testing.assert_close(y, case["y"], rtol=0, atol=0)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, case["grads"][n], rtol=0, atol=0)
    print(type(m.input_block).__name__, len(recomputed_modules(m)), len(kernels.patched_modules(m)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert [line[0] for line in lines] == ["RecomputedUnetBasicBlock", "RecomputedFusedUnetBasicBlock"]
    for line, case in zip(lines, saved.values(), strict=True):
        assert int(line[1]) == len(recomputed_modules(case["model"])) > 1
        assert int(line[2]) == len(kernels.patched_modules(case["model"]))
    assert int(lines[1][2]) > 0


def test_a_block_that_overwrites_its_input_is_named_at_its_forward():
    """An in-place first op inside the block (not the module itself): caught when it runs, not in backward."""
    from monai.networks.blocks import Convolution

    model = nn.Sequential(nn.Conv3d(2, 2, 3, padding=1),
                          Convolution(3, 2, 2, act=("leakyrelu", {"inplace": True}), adn_ordering="AN"))
    assert recompute(model, ["1.adn"]) == ["1.adn"]
    with pytest.raises(ValueError, match="ADN changed its input in place"):
        model(torch.randn(1, 2, 8, 8, 8, requires_grad=True))
    with torch.no_grad():  # nothing kept, nothing to recompute
        model(torch.randn(1, 2, 8, 8, 8))


def test_a_norm_or_activation_fused_into_its_block_cannot_be_checkpointed_alone():
    """The fused forward runs norm + activation through the kernels, never their own forward: a checkpoint
    there would do nothing, in either order of patching and recomputing."""
    import kernels

    patched = kernels.patch(build("dynunet", **TINY_DYN))
    with pytest.raises(ValueError, match=r"norm1 runs fused inside input_block \(FusedUnetBasicBlock\)"):
        recompute(patched, ["input_block.norm1"])
    plain = build("dynunet", **TINY_DYN)
    recompute(plain, ["input_block.norm1"])  # unfused: its forward runs, the checkpoint works
    with pytest.raises(ValueError, match=r"input_block.norm1 is checkpointed inside a block that fuses it"):
        kernels.patch(plain)


def test_a_name_that_prefixes_another_is_not_its_parent():
    # SwinUNETR has encoder1 and encoder10: ckpt:encoder1,encoder10 recomputes both
    model = nn.Module()
    model.encoder1 = nn.Sequential(nn.Conv3d(1, 1, 1))
    model.encoder10 = nn.Sequential(nn.Conv3d(1, 1, 1))
    assert match_modules(model, ["encoder1", "encoder10"]) == ["encoder1", "encoder10"]
    assert match_modules(model, ["encoder1*"]) == ["encoder1", "encoder10"]
