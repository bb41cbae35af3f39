"""`segbench env`: device facts and one line per speed feature, with why not."""

import json

import pytest
import torch

from segbench.cli import main


@pytest.mark.parametrize("bug", [True, False])  # both answers of the oneDNN probe, whatever this CPU's is
def test_env_on_cpu_lists_each_feature_and_writes_json(tmp_path, capsys, monkeypatch, bug):
    from seg import cpu_bf16

    monkeypatch.setattr(cpu_bf16, "conv3d_weight_grad_ok", lambda: not bug)
    path = tmp_path / "env.json"
    assert main(["env", "--device", "cpu", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    facts = json.loads(path.read_text())
    features = {f["name"]: f for f in facts["features"]}
    assert {
        "torch.compile (inductor)",
        "bf16",
        "CUDA graphs",
        "Triton fused norms",
        "NVTX ranges",
        "Nsight Systems",
    } <= set(features)
    assert not features["CUDA graphs"]["ok"] and "CUDA only" in features["CUDA graphs"]["detail"]
    # the oneDNN bf16 workaround is named exactly where the probe finds the bug
    assert ("oneDNN off" in features["bf16"]["detail"]) == bug
    assert facts["calibration"]["cpu_bf16_conv3d_weight_grad_ok"] == (not bug)
    assert "matmul_flops_per_s" not in facts["calibration"]  # measured only with --measure
    for f in features.values():
        assert f"{'✓' if f['ok'] else '✗'} {f['name']}: {f['detail']}" in out


def test_the_triton_interpreter_is_no_tick_for_the_bench_variants(tmp_path):
    """The interpreter runs the kernels, but no bench variant times them on a CPU: no ✓ every row contradicts.
    (A process of its own: Triton fixes its mode when it is imported.)"""
    import os
    import subprocess
    import sys

    path = tmp_path / "env.json"
    subprocess.run([sys.executable, "-m", "segbench", "env", "--device", "cpu", "--json", str(path)],
                   env={**os.environ, "TRITON_INTERPRET": "1"}, check=True, capture_output=True)
    features = {f["name"]: f for f in json.loads(path.read_text())["features"]}
    ways = {"Triton fused norms": "--fused-norm", "Triton window attention": "attention='triton'"}
    for name, flag in ways.items():
        detail = features[name]["detail"]
        assert not features[name]["ok"] and "need" in detail and "CUDA" in detail and flag in detail
    assert "--fused-norm" not in features["Triton window attention"]["detail"]  # its own way to run


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_env_cuda_without_a_gpu_says_so_and_fails(capsys):
    assert main(["env", "--device", "cuda"]) == 1
    assert "no CUDA device" in capsys.readouterr().out


def test_the_gpu_lines_follow_what_triton_needs_and_bf16_is_native_only_from_sm80(monkeypatch):
    """A GPU machine, faked: an old card, no C compiler, no Triton — each turns off what needs it."""
    import torch.utils._triton

    from bench import doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (6, 0))
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert "does not compile for this GPU (sm 6.0" in doctor._triton_cuda_problem()
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    assert doctor._triton_cuda_problem().startswith("no C compiler")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: True)  # emulated counts there
    assert not doctor._bf16_feature("cuda").ok
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert doctor._bf16_feature("cuda").ok
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (6, 0))
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)
    lines = {f.name: f for f in doctor.features("cuda")}
    assert not lines["torch.compile (inductor)"].ok
    assert not lines["CUDA graphs"].ok and lines["CUDA graphs"].detail == "needs torch.compile"
    assert not lines["Triton fused norms"].ok and "no C compiler" in lines["Triton fused norms"].detail


def test_a_machine_without_einops_is_told_stock_swinunetr_cannot_run(monkeypatch):
    import importlib.util

    from bench import doctor

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "einops" else real(name, *a))
    line = {f.name: f for f in doctor.features("cpu")}["stock MONAI SwinUNETR"]
    assert not line.ok and "einops is not installed" in line.detail
