"""profiles.footprint / profiles.cuda_emulation: a training step's peak memory, estimated on fake tensors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from profiles.cuda_emulation import CudaLike, sdpa_backend
from profiles.footprint import FootprintConfig, estimate_step_memory

KIB8 = 1 * 4 * 8 * 8 * 8 * 4  # one (1, 4, 8, 8, 8) fp32 feature map: 8 KiB


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), fused=True)


def _sum_step(model, optimizer, x):
    model(x).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_tiny_conv_net_peak_is_the_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 1, bias=False), nn.ReLU(), nn.Conv3d(4, 4, 1, bias=False))
    fp = estimate_step_memory(model, lambda: (torch.empty(1, 2, 8, 8, 8),), _adamw, _sum_step)
    params = (2 * 4 + 4 * 4) * 4
    # Steady state: AdamW's two moments and a step counter per parameter; the batch on the device.
    assert fp.by_category_bytes["Parameter"] == params
    assert fp.by_category_bytes["Optstate"] == 2 * params + 2 * 4
    assert fp.by_category_bytes["Input"] == 2 * 8 * 8 * 8 * 4
    # Peak: the ReLU's backward. Live: its saved output r, the gradient wrt r from conv2's
    # backward, the gradient wrt conv1's output being written, conv2's weight gradient, and the
    # two scalars (the loss and its seed gradient). conv1's output was freed in forward (ReLU
    # saves its result, not its input).
    assert (fp.peak_phase, fp.peak_module) == ("backward", "Sequential.1")
    assert fp.by_category_bytes["Activation"] == KIB8 + 8
    assert fp.by_category_bytes["Temp"] == 2 * KIB8
    assert fp.by_category_bytes["Gradient"] == 4 * 4 * 4
    assert fp.peak_bytes == 3 * params + 2 * 4 + 4096 + 3 * KIB8 + 64 + 8
    assert fp.by_module_bytes["Sequential.2"] == {"Temp": KIB8, "Gradient": 64}
    # the report's "largest at the peak": largest first
    sizes = [size for _, size in fp.top_modules]
    assert len(sizes) >= 2 and sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


def test_estimate_leaves_the_real_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.PReLU())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = [p for p in model.parameters()]
    estimate_step_memory(model, lambda: (torch.empty(1, 2, 8, 8, 8),), _adamw, _sum_step)
    assert [p for p in model.parameters()] == tensors  # same objects, still real
    assert not any(isinstance(p, torch._subclasses.FakeTensor) for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class _Attention(nn.Module):
    """A window-attention-like block: qkv projection, SDPA with dropout, output projection."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _attention_activation_bytes(tokens: int, cuda_kernels: bool) -> tuple[int, list[str]]:
    torch.manual_seed(0)
    fp = estimate_step_memory(
        _Attention(),
        lambda: (torch.empty(1, tokens, 16),),
        _adamw,
        _sum_step,
        FootprintConfig(cuda_kernels=cuda_kernels),
    )
    return fp.by_module_bytes["_Attention"].get("Activation", 0), fp.notes


def test_attention_memory_is_linear_in_tokens_when_routed_like_cuda():
    small, notes = _attention_activation_bytes(64, cuda_kernels=True)
    large, _ = _attention_activation_bytes(256, cuda_kernels=True)
    assert any("sdpa: efficient" in note for note in notes)  # fp32 without a mask: the efficient kernel
    assert large / small < 4.5  # O(N): q, k, v, out, log-sum-exp
    cpu_small, _ = _attention_activation_bytes(64, cuda_kernels=False)
    cpu_large, _ = _attention_activation_bytes(256, cuda_kernels=False)
    assert cpu_large / cpu_small > 10  # the CPU's math path keeps (N, N) scores and dropout noise
    assert cpu_large > 4 * large


def test_sdpa_backend_follows_cudas_rules():
    def qkv(dtype, head=16, n=49):
        return [torch.empty(2, 3, n, head, dtype=dtype) for _ in range(3)]

    bias = torch.empty(1, 3, 49, 49, dtype=torch.bfloat16)
    assert sdpa_backend(*qkv(torch.bfloat16)) == "flash"
    assert sdpa_backend(*qkv(torch.bfloat16), attn_mask=bias) == "efficient"  # flash takes no mask
    assert sdpa_backend(*qkv(torch.float32)) == "efficient"  # flash is half precision only
    assert sdpa_backend(*qkv(torch.float32, head=6)) == "math"  # fp32 head dims must divide by 4
    assert sdpa_backend(*qkv(torch.bfloat16, head=12), attn_mask=bias) == "math"  # half: by 8


def test_autocast_follows_cudas_lists_inside_and_cpus_outside():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with CudaLike() as cuda, torch.autocast("cpu", dtype=torch.bfloat16):
        h = F.linear(x, w)
        assert h.dtype == torch.bfloat16
        assert F.layer_norm(h, [8]).dtype == torch.float32  # CUDA: fp32 list
        assert torch.softmax(h, -1).dtype == torch.float32  # CUDA: fp32_set_opt_dtype
        assert torch.softmax(h, -1, torch.bfloat16).dtype == torch.bfloat16  # ... unless a dtype is given
        assert h.sum(1).dtype == torch.float32
    assert cuda.policies["layer_norm"] == "fp32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(F.linear(x, w), [8]).dtype == torch.bfloat16  # CPU's own lists again


def test_ops_only_cpu_autocast_lists_pass_autocast_through_to_the_ops_inside():
    """On CUDA a composite op without an autocast kernel (conv with padding="same", cross_entropy)
    runs its inner ops under autocast: conv in bf16, cross_entropy's log_softmax in fp32."""
    x = torch.randn(1, 4, 6, 6, 6)
    conv = torch.nn.Conv3d(4, 8, 3, padding="same")
    logits = torch.randn(2, 4, 6, 6, 6).bfloat16()
    with CudaLike() as cuda, torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
        assert F.cross_entropy(logits, torch.randint(0, 4, (2, 6, 6, 6))).dtype == torch.float32
        assert torch.cat([x.bfloat16(), x]).dtype == torch.float32  # CUDA's promote list
    assert "none" in cuda.policies.values()


def test_dropout_saves_a_bool_mask_as_on_cuda():
    x = torch.randn(64, 64, requires_grad=True)
    with CudaLike(autocast=False):
        y = F.dropout(x, 0.2, training=True)
    assert type(y.grad_fn).__name__ == "NativeDropoutBackward0"
    assert type(F.dropout(x, 0.2, training=True).grad_fn).__name__ != "NativeDropoutBackward0"


def test_workload_row_for_a_tiny_unet_is_an_estimate_and_reported_as_one():
    from bench.config import FootprintParams, Measure
    from bench.suite_file import load_suite
    from bench.variants import Unavailable, VariantContext, resolve
    from bench.workloads import footprint
    from bench.workloads.common import Case
    from reports.tables import workload_table

    ctx = VariantContext(kind="footprint", model="unet", device="cpu")
    params = FootprintParams(model="unet", shape=[32, 32, 32], batch=1, anchor_peak_gib={"bf16": 0.05})

    def case(variant: str) -> Case:
        return Case("t", "unet", "footprint", variant, "cpu", params, resolve(variant, ctx), Measure())

    rows = {v: footprint.run(case(v)) for v in ("fp32", "bf16")}
    row = rows["bf16"]
    assert row["estimate"] is True and row["peak_bytes"] is None and row["estimate_device"].startswith("cpu")
    assert row["estimated_peak_bytes"] == sum(row["estimated_bytes_by_category"].values())
    assert row["estimated_bytes_by_category"]["Input"] == 4 * 32**3 * 4 + 32**3 * 8  # image + int64 label
    assert row["estimated_peak_bytes"] < rows["fp32"]["estimated_peak_bytes"]  # bf16 activations
    assert row["estimate_vs_anchor"] == pytest.approx(row["estimated_peak_bytes"] / (0.05 * 2**30) - 1)
    assert "estimate_vs_anchor" not in rows["fp32"]  # no ANCHORS number for it
    with pytest.raises(Unavailable, match="compile"):
        footprint.run(case("bf16+compile"))

    shown = workload_table(
        [
            {**r, "workload": "unet", "variant": v, "status": "ok", "kind": "footprint"}
            for v, r in rows.items()
        ]
    )
    assert "peak memory" not in shown.columns  # the measured column never holds an estimate
    assert shown["estimated peak (CPU estimate, not measured)"].str.endswith("MiB").all()

    suite = load_suite("footprint")  # the shipped suite parses; `seed` checkpoints SwinUNETR here too
    assert {w.kind for w in suite.workloads} == {"footprint"}
    swin = VariantContext(kind="footprint", model="swinunetr", device="cpu")
    assert resolve("seed", swin).checkpointing is True and resolve("seed", swin).precision == "fp16"


def test_fused_norm_variant_is_estimated_through_the_custom_ops_fake_kernels(tmp_path):
    """footprint rows for `fused_norm` run kernels.patch's custom ops on fake tensors: one op each way
    per fused block, so the step moves fewer bytes than the eager norm + activation it replaces."""
    from bench.runner import run_suite

    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "t"\ndescription = "t"\ndevice = "cpu"\nreference = ""\n[[workload]]\nkind = "footprint"\n'
        'name = "dyn"\nmodel = "dynunet"\nmodel_options = { filters = [8, 16, 32], kernel_size = [3, 3, 3], '
        "strides = [1, 2, 2], upsample_kernel_size = [2, 2] }\nshape = [32, 32, 32]\nbatch = 1\n"
        'variants = ["bf16", "bf16+fused_norm"]\n'
    )
    run = run_suite(suite, tmp_path / "run", report=False)
    rows = {r["variant"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}
    assert rows["bf16+fused_norm"]["status"] == "ok", rows["bf16+fused_norm"].get("error")
    assert rows["bf16+fused_norm"]["estimated_bytes_moved"] < rows["bf16"]["estimated_bytes_moved"]
    assert rows["bf16+fused_norm"]["estimated_ops"] < rows["bf16"]["estimated_ops"]


def test_footprint_top_modules_count_temporaries_too():
    from profiles.footprint import estimate_step_memory

    def step(model, optimizer, x):
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 1, bias=False), nn.ReLU(), nn.Conv3d(4, 4, 1, bias=False))
    fp = estimate_step_memory(model, lambda: (torch.empty(1, 2, 8, 8, 8),),
                              lambda m: torch.optim.AdamW(m.parameters(), fused=True), step)
    assert fp.by_module_bytes["Sequential.2"]["Temp"] == 8192
    assert dict(fp.top_modules)["Sequential.2"] == 8192  # a Temp-only module is listed at the peak
