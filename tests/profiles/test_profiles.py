"""Trace summaries on synthetic Chrome traces, and `segbench profile` on the CPU."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from profiles.nsys import nsys_command
from profiles.summarize import classify, summarize_trace

TINY = Path(__file__).parents[1] / "bench" / "tiny_suite.toml"


@pytest.mark.parametrize(
    "name, category",
    [
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel", "copies"),
        ("void at::native::batch_norm_collect_statistics_kernel", "normalization"),
        ("_stats_kernel", "normalization"),
        ("ampere_bf16_s16816gemm_bf16_128x64", "matmul"),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "matmul"),  # cuBLAS on Hopper, CUDA 13
        ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8", "matmul"),
        ("pytorch_flash::flash_fwd_kernel", "attention"),
        ("fmha_cutlassB_bf16_aligned_64x64_k32_dropout_sm80", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64", "attention"),
        ("aten::_scaled_dot_product_efficient_attention", "attention"),
        ("_wattn_bwd_dbias_kernel", "attention"),  # kernels.window_attention
        ("segbench::window_attention_fwd", "attention"),
        ("void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add>", "elementwise"),
        ("triton_poi_fused_add_leaky_relu_0", "elementwise"),
        ("triton_poi_fused_convolution_leaky_relu_0", "elementwise"),  # an epilogue after cuDNN's conv
        ("triton_red_fused_native_layer_norm_backward_3", "normalization"),
        ("triton_per_fused__native_batch_norm_legit_functional_1", "normalization"),
        ("triton_poi_fused_clone_7", "copies"),
        ("triton_tem_fused_mm_2", "matmul"),
        ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1>", "normalization"),
        ("aten::upsample_trilinear3d", "elementwise"),
        ("Memcpy HtoD (Pageable -> Device)", "copies"),
        ("aten::convolution_backward", "convolution"),
        ("aten::addmm", "matmul"),
        ("aten::slow_conv_transpose3d", "convolution"),
        ("void transpose_readWrite_alignment_kernel<float2, float2, 1, false, 6, 4, 4>", "copies"),
        ("some_unknown_kernel", "other"),
        # fused AdamW, the GradScaler's unscale and _foreach_* ops: not the Triton norms' _apply_kernel
        ("void at::native::multi_tensor_apply_kernel<at::native::TensorListMetadata<4>, "
         "at::native::FusedAdamMathFunctor<float, 4>>", "elementwise"),
        ("_apply_kernel", "normalization"),
        ("_ln_bwd_kernel", "normalization"),
        ("aten::normal_", "elementwise"),  # random numbers, not a norm
        ("aten::_foreach_copy_", "copies"),
        ("void at::native::lpnorm_cleanup<float, 1, float, float>", "elementwise"),  # clip_grad_norm_
        ("void at::native::distribution_elementwise_grid_stride_kernel<float, 4, normal_and_transform>",
         "elementwise"),
        ("void at::native::GammaBetaBackwardCUDAKernel<float, float>", "normalization"),
        ("graph_0_cpp_fused__native_batch_norm_legit__prelu_kernel_view_9", "normalization"),  # CPU compile
        ("graph_0_cpp_fused_convolution_leaky_relu_3", "elementwise"),
        # SwinUNETR on a CPU trace: attention's baddbmm is a matmul (not "add"), the MLP's gelu
        # elementwise, the shifted windows' roll and padding copies, slow_conv3d's vol2col convolution
        ("aten::baddbmm", "matmul"),
        ("aten::gelu", "elementwise"),
        ("aten::silu", "elementwise"),
        ("aten::roll", "copies"),
        ("void at::native::roll_cuda_kernel<float>", "copies"),
        ("void at::native::unrolled_elementwise_kernel<at::native::CUDAFunctor_add<float>>", "elementwise"),
        ("aten::constant_pad_nd", "copies"),
        ("vol2col", "convolution"),
        ("im2col_kernel", "convolution"),
    ],
)
def test_classify(name, category):
    assert classify(name) == category


def _write(path: Path, events: list[dict]) -> Path:
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return path


def test_gpu_summary_counts_kernels_and_idle(tmp_path):
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::conv3d", "ts": 0, "dur": 500},
        {"ph": "X", "cat": "kernel", "name": "sm90_xmma_fprop_implicit_gemm", "ts": 0, "dur": 40},
        {"ph": "X", "cat": "kernel", "name": "instance_norm_kernel", "ts": 50, "dur": 20},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD", "ts": 70, "dur": 10},
        {"ph": "X", "cat": "kernel", "name": "ampere_sgemm", "ts": 90, "dur": 10},
    ]
    s = summarize_trace(_write(tmp_path / "t.json.gz", events), steps=1)
    assert s["device"] == "cuda" and s["total_us"] == 100
    assert s["categories"]["convolution"] == 40 and s["categories"]["normalization"] == 20
    assert s["categories"]["copies"] == 10 and s["categories"]["matmul"] == 10
    assert s["categories"]["idle"] == 20  # 40..50 and 80..90
    # 4 pieces of device work; idle 10 µs twice (the launch-bound count), the 0 µs join at 70 not
    assert s["kernels"] == 4 and s["idle_gaps"] == 2
    assert [t["name"] for t in s["top"]] == [
        "sm90_xmma_fprop_implicit_gemm", "instance_norm_kernel", "Memcpy DtoD", "ampere_sgemm"
    ]
    top = {"name": "sm90_xmma_fprop_implicit_gemm", "category": "convolution", "us": 40, "calls": 1}
    assert s["top"][0] == top


def test_summarize_runs_alone_on_a_trace_file(tmp_path, capsys):
    from profiles.summarize import main

    events = [{"ph": "X", "cat": "kernel", "name": "instance_norm_kernel", "ts": 0, "dur": 20}]
    assert main([str(_write(tmp_path / "t.json.gz", events)), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cuda time by category (0.02 ms over 2 steps):") and "normalization" in out
    assert main([str(tmp_path / "missing.json.gz")]) == 1 and "missing.json.gz" in capsys.readouterr().err
    # a summary.json or memory snapshot given by mistake, a trace with a bad event: one line, no traceback
    (tmp_path / "summary.json").write_text('{"categories": {}}')
    assert main([str(tmp_path / "summary.json")]) == 1
    assert "summary.json: not a Chrome trace" in capsys.readouterr().err
    odd = events + [{"ph": "X", "cat": "kernel", "name": "x", "ts": 5, "dur": "20"}, "not an event"]
    assert main([str(_write(tmp_path / "odd.json.gz", odd))]) == 0


def test_cpu_summary_uses_self_time_of_nested_ops(tmp_path):
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::instance_norm", "ts": 0, "dur": 100, "pid": 1, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mul", "ts": 10, "dur": 30, "pid": 1, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "aten::convolution", "ts": 120, "dur": 80, "pid": 1, "tid": 1},
    ]
    s = summarize_trace(_write(tmp_path / "t.json.gz", events))
    assert s["device"] == "cpu"
    assert s["categories"]["normalization"] == 70 and s["categories"]["elementwise"] == 30
    assert s["categories"]["convolution"] == 80 and s["categories"]["idle"] == 20


def test_the_window_is_the_profiled_steps_with_their_waits_before_the_first_op(tmp_path):
    """A data loader's wait before a step's first op (CPU) or a device's wait before its first kernel
    (CUDA) is idle time of the step: the window is the ProfilerStep ranges, not first to last op."""
    steps = [{"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{i}", "ts": 1000 * i, "dur": 1000,
              "pid": 1, "tid": 1} for i in (3, 4)]
    cpu = [{"ph": "X", "cat": "cpu_op", "name": "aten::convolution", "ts": 1000 * i + 600, "dur": 300,
            "pid": 1, "tid": 1} for i in (3, 4)]
    s = summarize_trace(_write(tmp_path / "cpu.json.gz", steps + cpu), steps=2)
    assert s["total_us"] == 2000 and s["window_us"] == 2000
    assert s["categories"]["convolution"] == 600 and s["categories"]["idle"] == 1400
    kernels = [{"ph": "X", "cat": "kernel", "name": "sm90_xmma_fprop_implicit_gemm", "ts": 1000 * i + 500,
                "dur": 500} for i in (3, 4)]
    kernels[-1]["dur"] = 700  # still running after the last step's host side ended
    s = summarize_trace(_write(tmp_path / "gpu.json.gz", steps + cpu + kernels), steps=2)
    assert s["total_us"] == 2200 and s["categories"]["idle"] == 1000


def test_nsys_command_captures_the_profiler_range():
    cmd = nsys_command(["python", "-m", "bench.profile", "spec.json", "out"], Path("out/nsys"))
    assert cmd[:2] == ["nsys", "profile"]
    assert "--capture-range=cudaProfilerApi" in cmd and "--trace=cuda,nvtx,cudnn,cublas" in cmd
    assert cmd[-5:] == ["python", "-m", "bench.profile", "spec.json", "out"]


def _segbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segbench", *args], capture_output=True, text=True, timeout=300
    )


def test_profile_cli_on_cpu_writes_trace_table_summary_and_report(tmp_path):
    run = tmp_path / "run"
    proc = _segbench(
        "profile",
        "--suite",
        str(TINY),
        "--workload",
        "train_step",
        "--variant",
        "fp32",
        "--out",
        str(run),
        "--wait",
        "0",
        "--warmup",
        "1",
        "--active",
        "1",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = run / "profiles" / "train_step__fp32"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["categories"]["convolution"] > 0
    assert "aten::" in (out / "key_averages.txt").read_text()
    assert (out / "trace.json.gz").stat().st_size > 1000
    # The profile folds into the run's report.
    (run / "results.jsonl").write_text(
        json.dumps(
            {
                "suite": "tiny",
                "workload": "train_step",
                "kind": "train_step",
                "variant": "fp32",
                "status": "ok",
            }
        )
        + "\n"
    )
    proc = _segbench("report", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "Where the time goes" in (run / "report.md").read_text()
    assert (run / "figures" / "trace_breakdown.png").is_file()


def test_profile_nsys_of_a_cpu_case_and_a_negative_wait_are_one_line_each(tmp_path):
    common = ["profile", "--suite", str(TINY), "--workload", "train_step", "--variant", "fp32", "--out",
              str(tmp_path)]
    proc = _segbench(*common, "--nsys")  # the tiny suite runs on the CPU: nothing for nsys to capture
    assert proc.returncode == 2 and "--nsys traces CUDA kernels" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "profiles").exists()
    proc = _segbench(*common, "--wait", "-1")
    assert proc.returncode == 2 and "--wait -1" in proc.stderr and "Traceback" not in proc.stderr
    import torch

    if not torch.cuda.is_available():  # a CUDA suite here: how to profile it on the CPU instead
        proc = _segbench("profile", "--suite", "unet", "--workload", "unet", "--variant", "bf16", "--out",
                         str(tmp_path))
        assert proc.returncode == 2 and "--device cpu profiles the case on the CPU" in proc.stderr


def test_profile_of_an_unavailable_variant_says_why(tmp_path):
    proc = _segbench(
        "profile",
        "--suite",
        str(TINY),
        "--workload",
        "train_step",
        "--variant",
        "tf32",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 2 and "TF32" in proc.stderr


def test_profile_of_an_unknown_variant_is_one_line(tmp_path):
    proc = _segbench(
        "profile", "--suite", str(TINY), "--workload", "train_step", "--variant", "fp33",
        "--out", str(tmp_path),
    )
    assert proc.returncode == 2 and "unknown variant 'fp33'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "profiles").exists()


def test_gpu_summary_shares_the_time_of_kernels_that_ran_at_once_on_two_streams(tmp_path):
    # a prefetcher's host-to-device copy (its own stream) beside the step's convolution: the
    # categories still add up to the window, shares stay under 100 %
    events = [
        {"ph": "X", "cat": "kernel", "name": "sm90_xmma_fprop_implicit_gemm", "ts": 0, "dur": 1000, "tid": 7},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned)", "ts": 0, "dur": 800, "tid": 9},
        {"ph": "X", "cat": "kernel", "name": "instance_norm_kernel", "ts": 1100, "dur": 100, "tid": 7},
    ]
    s = summarize_trace(_write(tmp_path / "t.json.gz", events), steps=1)
    cats = s["categories"]
    assert s["total_us"] == 1200 and sum(cats.values()) == pytest.approx(1200)
    assert cats["convolution"] == pytest.approx(400 + 200) and cats["copies"] == pytest.approx(400)
    assert cats["normalization"] == pytest.approx(100) and cats["idle"] == pytest.approx(100)
    assert s["overlap_us"] == pytest.approx(800)
    assert s["top"][0]["us"] == 1000  # the kernel list keeps each kernel's own duration


def test_a_profile_past_its_timeout_stops_its_whole_process_group(tmp_path):
    import time

    from bench.profile import _run_with_timeout

    pid_file = tmp_path / "grandchild"
    # a wrapper (as nsys is) whose own child ignores nothing: both must be gone afterwards
    command = ["bash", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]
    start = time.monotonic()
    assert _run_with_timeout(command, timeout_s=1.0, grace_s=2.0) is None
    assert time.monotonic() - start < 10
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    time.sleep(0.2)
    # gone, or a zombie its new parent has not reaped yet (a container's init may never)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    assert _run_with_timeout(["true"], timeout_s=5.0) == 0


def test_a_failed_capture_leaves_no_trace_or_summary_of_an_earlier_one(tmp_path):
    import torch

    from profiles.torch_trace import capture_torch

    cfg = {"wait": 0, "warmup": 1, "active": 3}
    capture_torch(lambda: torch.ones(8) * 2, torch.device("cpu"), cfg, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"trace.json.gz", "key_averages.txt", "summary.json"}
    calls = []

    def oom_on_the_third_step():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")
        return torch.ones(8) * 2

    with pytest.raises(RuntimeError, match="simulated"):
        capture_torch(oom_on_the_third_step, torch.device("cpu"), cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_profile_of_a_cuda_case_without_cuda_is_one_line_and_leaves_nothing(tmp_path):
    proc = _segbench("profile", "--suite", str(TINY), "--workload", "train_step", "--variant", "fp32",
                     "--out", str(tmp_path), "--device", "cuda")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "train_step/fp32 cannot run here: no CUDA device" in proc.stderr
    assert not (tmp_path / "profiles").exists()


def _trace_of(tmp_path, events):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return path


def test_cpu_self_time_nests_ops_of_one_thread_only_and_back_to_back_ops_are_siblings(tmp_path):
    def op(name, ts, dur, tid=1):
        return {"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}

    # an op on another thread inside this one's span is no child of it
    other_thread = [op("aten::instance_norm", 0, 100), op("aten::mul", 10, 30, tid=2)]
    cats = summarize_trace(_trace_of(tmp_path, other_thread))["categories"]
    assert cats["normalization"] == 100 and cats["elementwise"] == 30
    # an op starting exactly when the previous one ended is its sibling
    back_to_back = [op("aten::convolution", 0, 50), op("aten::mul", 50, 50)]
    cats = summarize_trace(_trace_of(tmp_path, back_to_back))["categories"]
    assert cats["convolution"] == 50 and cats["elementwise"] == 50
