"""`segbench env`: what this machine can run, before a suite finds out case by case.

One line per speed feature the harness measures (torch.compile, CUDA graphs, Triton fused norms,
flash attention, bf16, NVTX / Nsight Systems), each with why not where it cannot run, plus the
host and device facts that go into every run's env.json. `--measure` adds the matmul rate and
copy bandwidth the reports use as ceilings (a few seconds). Like MONAI's `print_config` and
`python -m torch.utils.collect_env`, but answering "which of segbench's variants work here".
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from reports.rows import cudnn_text


@dataclass
class Feature:
    name: str
    ok: bool
    detail: str  # what runs, or why not
    variants: str = ""  # the harness variants / CLI switches that need it

    def line(self) -> str:
        needs = f"  [{self.variants}]" if self.variants else ""
        return f"{'✓' if self.ok else '✗'} {self.name}: {self.detail}{needs}"


def _triton_cuda_problem() -> str | None:
    """Why Triton cannot build GPU kernels here, or None: beyond importing it, inductor's GPU check
    (sm 7.0 and newer) and what Triton builds its launcher with on first use (a C compiler, Python.h),
    which slim GPU images may lack."""
    from kernels.runtime import _triton_import_error

    err = _triton_import_error()
    if err:
        return err
    import torch
    from torch.utils._triton import has_triton

    if torch.cuda.is_available() and not has_triton():
        major, minor = torch.cuda.get_device_capability()
        return f"Triton does not compile for this GPU (sm {major}.{minor}; inductor needs 7.0 or newer)"
    compilers = [c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c]
    if not any(shutil.which(c) for c in compilers):
        return "no C compiler (Triton builds its kernel launcher with one on first use)"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        return f"no Python.h in {include} (Triton builds its launcher against it: the python3-dev package)"
    return None


def _compile_feature(device: str) -> Feature:
    variants = "compile[:MODE], --compile"
    if device == "cuda":
        err = _triton_cuda_problem()
        return Feature(
            "torch.compile (inductor)", err is None, err or "Triton generates the GPU kernels", variants
        )
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        compiler = get_cpp_compiler()
    except (RuntimeError, OSError) as e:
        return Feature(
            "torch.compile (inductor)", False, f"no C++ compiler for inductor's CPU code ({e})", variants
        )
    ok = shutil.which(compiler) is not None
    detail = f"C++ kernels built with {compiler}" if ok else f"C++ compiler {compiler!r} not found"
    return Feature("torch.compile (inductor)", ok, detail, variants)


def _bf16_feature(device: str) -> Feature:
    import torch

    variants = "bf16, --precision bf16"
    if device == "cuda":
        # native bf16 is sm 8.0 and newer; torch.cuda.is_bf16_supported() also says yes where it is
        # emulated (a V100 or T4 can hold bf16 tensors)
        ok = torch.cuda.get_device_capability() >= (8, 0)
        return Feature("bf16", ok, "native bf16 on this GPU" if ok else "this GPU has no native bf16 "
                       "(sm 8.0 and newer): fp16 is its fast precision", variants)
    from seg import cpu_bf16

    if cpu_bf16.conv3d_weight_grad_ok():
        return Feature("bf16", True, "bf16 autocast on the CPU (oneDNN's conv3d gradients checked)", variants)
    return Feature(
        "bf16",
        True,
        "runs, but this CPU's oneDNN gets bf16 conv3d weight gradients wrong on 2-voxel-wide maps: "
        "training steps through such maps turn oneDNN off (right, ~10× slower; see seg.cpu_bf16)",
        variants,
    )


def features(device: str, sdpa_order: list[str] | None = None) -> list[Feature]:
    """One Feature per speed feature; `sdpa_order`: the order SDPA tries its kernels on this device
    (bench.env.device_facts' `sdpa_order`), shown with flash attention."""
    import torch

    from kernels.runtime import unavailable_reason

    cuda = device == "cuda"
    compile_ = _compile_feature(device)
    out = [compile_, _bf16_feature(device)]
    out.append(
        Feature(
            "CUDA graphs",
            cuda and compile_.ok,
            "CUDA only" if not cuda else "torch.compile's reduce-overhead mode" if compile_.ok
            else "needs torch.compile",
            "compile:reduce-overhead",
        )
    )
    # the kernels' own check imports Triton; on a GPU, what it needs to build kernels too
    why = unavailable_reason(torch.device(device)) or (_triton_cuda_problem() if cuda else None)
    norms = f"{why}: the ops run their PyTorch reference" if why else "kernels run as Triton on this device"
    attention = why or "the fast SwinUNETR's attention as Triton (experimental; the default stays SDPA)"
    if why is None and not cuda:  # the interpreter: right for tests, far too slow for a timed variant
        why = "TRITON_INTERPRET runs the kernels interpreted"
        norms = f"{why} (tests, segbench train --fused-norm; slowly); the bench variants need CUDA"
        attention = (f"{why} (tests, seg.swin_fast.to_fast(attention='triton'); slowly); the bench variant "
                     "needs CUDA")
    out.append(Feature("Triton fused norms", why is None, norms, "fused_norm, --fused-norm"))
    out.append(Feature("Triton window attention", why is None, attention, "swin_fast+triton_attn"))
    if cuda:
        sm80 = torch.cuda.get_device_capability() >= (8, 0)  # Ampere and later
        flash = torch.backends.cuda.is_flash_attention_available() and sm80
        out.append(
            Feature(
                "flash attention (SDPA)",
                flash,
                ("FlashAttention-2 kernels for unmasked windows"
                 if flash
                 else "not on this GPU / build: SDPA falls back to the memory-efficient or math kernels")
                + (f"; SDPA tries {' > '.join(sdpa_order)}" if sdpa_order else ""),
                "sdpa, swin_fast",
            )
        )
        out.append(Feature("TF32", sm80, "tensor-core fp32", "tf32"))
    import importlib.util

    einops = importlib.util.find_spec("einops") is not None
    out.append(
        Feature(
            "stock MONAI SwinUNETR",
            einops,
            "einops present (MONAI's SwinUNETR rearranges with it in every forward)"
            if einops
            else "einops is not installed: a stock SwinUNETR fails in its first forward (MONAI imports "
            "it optionally); the fast path does not need it",
            "swinunetr workloads without swin_fast",
        )
    )
    from profiles.nvtx import _nvtx

    out.append(
        Feature(
            "NVTX ranges",
            _nvtx is not None,
            "phases named in Nsight Systems timelines"
            if _nvtx is not None
            else "the nvtx package is not installed",
            "segbench profile --nsys",
        )
    )
    nsys = shutil.which("nsys")
    out.append(
        Feature("Nsight Systems", nsys is not None, nsys or "nsys is not on PATH", "segbench profile --nsys")
    )
    return out


@dataclass
class EnvReport:
    device: str
    host: dict
    calibration: dict | None
    features: list[Feature]
    cuda_error: str | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "features": [asdict(f) for f in self.features]}

    def render(self) -> str:
        h = self.host
        lines = [
            f"host: {h.get('cpu')} ({h.get('cpu_count')} logical CPUs, {h.get('cpu_affinity')} usable), "
            f"Python {h.get('python')}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in h.get("versions", {}).items() if v),
        ]
        missing = [k for k, v in h.get("versions", {}).items() if not v]
        if missing:
            lines.append("not installed: " + ", ".join(missing))
        if self.cuda_error:
            lines.append(f"device: no CUDA device ({self.cuda_error}); the features below are the CPU's")
        cal = self.calibration or {}
        if cal.get("gpu"):
            gib = cal["gpu_memory_bytes"] / 2**30
            lines.append(
                f"device: {cal['gpu']} (sm {cal['gpu_capability']}, {gib:.1f} GiB, "
                f"{cal['gpu_sm_count']} SMs), CUDA {cal['torch_cuda']}, cuDNN {cudnn_text(cal['cudnn'])}, "
                f"driver {cal.get('driver')}"
            )
            if cal["gpu_memory_bytes"] < 12 * 2**30:
                lines.append(
                    "  a small card: `segbench footprint --model M --variant V --gpu-gib N` estimates a "
                    "step's peak memory before you run it"
                )
        elif not self.cuda_error:
            lines.append(f"device: cpu, torch threads {cal.get('torch_threads')}")
        if cal.get("matmul_flops_per_s"):
            lines.append(
                f"measured: {cal['matmul_dtype']} matmul {cal['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s, "
                f"copy {cal['copy_bytes_per_s'] / 1e9:.1f} GB/s"
            )
        lines += [f.line() for f in self.features]
        return "\n".join(lines)


def collect(device: str, measure: bool = False) -> EnvReport:
    """Facts about `device` ("cpu" or "cuda"); with `measure`, its matmul and copy rates too."""
    from bench.env import calibrate, capture_host, device_facts
    from bench.variants import Unavailable

    host = capture_host()
    try:
        calibration = calibrate(device) if measure else device_facts(device)
    except Unavailable as e:  # --device cuda on a machine without one: say so, list the CPU's features
        return EnvReport(device, host, None, features("cpu"), cuda_error=str(e))
    return EnvReport(device, host, calibration, features(device, calibration.get("sdpa_order")))
