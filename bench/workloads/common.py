"""What the workloads share: the case they run, the device, models built from one set of initial
weights with a variant applied, synthetic batches, and the seed recipe's training state."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from bench.variants import CaseConfig, Unavailable
from seg.speed import cudnn_autotune


@dataclass
class Case:
    """One (workload, variant) as the subprocess receives it (see bench.case)."""

    suite: str
    workload: str
    kind: str
    variant: str
    device: str
    params: Any  # the kind's dataclass from bench.config
    config: CaseConfig
    measure: Any  # bench.config.Measure
    baseline: tuple[str, CaseConfig] | None = None  # paired, interleaved baseline
    reference: tuple[str, CaseConfig] | None = None  # parity reference
    calibration: dict = field(default_factory=dict)
    cache_dir: str | None = None  # shared by the cases of one run (reference trajectories)
    data_dir: str | None = None  # prepared data for loader workloads


def release(device: torch.device) -> None:
    """Return freed models' blocks to the device, so the next model's reserved peak is its own."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def torch_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA device visible to PyTorch")
    return torch.device(name)


def apply_backend(cfg: CaseConfig, device: torch.device) -> None:
    """Process-wide math settings of the variant (each case has its own process)."""
    if cfg.fail == "crash":  # harness self-test of a case that dies without a word (segfault)
        import os
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
    if cfg.fail == "hang":  # ... and of one that never ends (the per-case timeout)
        import time

        time.sleep(24 * 3600)
    if cfg.fail:
        raise RuntimeError(cfg.fail)
    if device.type == "cuda":
        # fp32 keeps PyTorch's defaults (cuDNN may use TF32 for convolutions, matmuls do not);
        # tf32 turns it on for matmuls too.
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = True
    cudnn_autotune(device)  # as training and inference run (the warm-up steps cover its search)


@contextlib.contextmanager
def math_mode(cfg: CaseConfig, device: torch.device) -> Iterator[None]:
    """The variant's TF32 setting for a block (the reference runs in a variant's process), restored after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def kernels_api(*names: str) -> list[Any]:
    """Functions of the `kernels` package, or Unavailable saying why they cannot run here."""
    try:
        import kernels
        from kernels.runtime import available
    except ImportError as err:
        raise Unavailable(f"kernels package not importable: {err}") from None
    ok, reason = available()
    if not ok:
        raise Unavailable(reason)
    missing = [n for n in names if not hasattr(kernels, n)]
    if missing:
        raise Unavailable(f"kernels has no {', '.join(missing)} yet")
    return [getattr(kernels, n) for n in names]


def model_options(name: str, options: dict, cfg: CaseConfig) -> dict:
    options = dict(options)
    if name == "swinunetr":
        if cfg.checkpointing is not None:
            options["use_checkpoint"] = cfg.checkpointing
        if cfg.sdpa:
            options["use_flash_attention"] = True
    return options


def initial_state(name: str, options: dict, seed: int) -> dict[str, torch.Tensor]:
    """The initial weights every variant of a workload starts from (built on the CPU, seeded)."""
    from seg.models import build

    torch.manual_seed(seed)
    return copy.deepcopy(build(name, **options).state_dict())


def build_model(
    name: str,
    options: dict,
    cfg: CaseConfig,
    device: torch.device,
    state: dict[str, torch.Tensor],
    require_kernels: bool = True,
) -> nn.Module:
    """`name` with the variant's options, the shared initial weights, then its transforms
    (`require_kernels=False`: fused norms patched in where Triton cannot run, for fake tensors)."""
    from seg.models import build

    model = build(name, **model_options(name, options, cfg))
    model.load_state_dict(state)
    model = model.to(device)  # on the device first: the fast path builds its caches there
    # the same transforms, in the same order, as `segbench train` / `segbench infer` apply them
    from seg.speed import SpeedOptionError, apply_speed_options, inductor_options

    try:
        return apply_speed_options(
            model,
            fast=cfg.swin_fast,
            fused_norm=cfg.fused_norm,
            channels_last=cfg.channels_last,
            compile_mode=cfg.compile_mode,
            checkpoint_modules=cfg.checkpoint_modules,
            require_kernels=require_kernels,
            swin_attention=cfg.swin_attention,
            inductor=inductor_options(cfg.inductor),
        )
    except SpeedOptionError as err:  # e.g. fused_norm where Triton cannot run: the reason
        raise Unavailable(str(err)) from None


def to_input(x: torch.Tensor, cfg: CaseConfig, device: torch.device) -> torch.Tensor:
    from seg.speed import to_input as speed_input

    return speed_input(x.to(device, non_blocking=True), cfg.channels_last)


def profile_fields(case: Case, step: Callable[[], object], device: torch.device) -> dict:
    """With `measure.profile_steps`: that many more steps traced by torch.profiler (after one traced
    warm-up step), the trace and its summary in RUN/profiles/<workload>__<variant>/ (the report's
    "where the time goes"), and the row's `profile`: ms per step, by category, the top kernels.
    A diagnostic after the timing: its failure is noted (`profile_error`), never costs the row."""
    steps = case.measure.profile_steps
    if not steps or case.cache_dir is None:
        return {}
    from pathlib import Path

    from bench.profile import profile_dir
    from profiles.torch_trace import capture_torch

    run = Path(case.cache_dir).parent
    out = profile_dir(run, case.workload, case.variant)
    try:
        out.mkdir(parents=True, exist_ok=True)
        summary = capture_torch(step, device, {"wait": 0, "warmup": 1, "active": steps}, out)
    except Exception as err:
        return {"profile_error": f"{type(err).__name__}: {err}"[:300]}
    per_step = 1e-3 / steps  # us over all steps -> ms per step
    return {
        "profile": {
            "dir": str(out.relative_to(run)),
            "steps": steps,
            "device": summary["device"],
            "ms_per_step": summary["total_us"] * per_step,
            "ms_per_step_by_category": {c: us * per_step for c, us in summary["categories"].items() if us},
            "top_kernels": [
                {"name": t["name"], "ms_per_step": t["us"] * per_step, "calls_per_step": t["calls"] / steps}
                for t in summary.get("top", [])[:5]
            ],
        }
    }


def attention_kernels_fields(probe: Callable[[], dict[str, int]]) -> dict:
    """Row fields from an attention-kernel probe run after the measurement: `attention_kernels` ({}
    when the model made no SDPA call), or `attention_kernels_error`. A diagnostic: its failure (e.g.
    out of memory eagerly for a model that fits only compiled) is noted, never costs the row."""
    try:
        return {"attention_kernels": probe()}
    except Exception as err:
        return {"attention_kernels_error": f"{type(err).__name__}: {err}"[:300]}


def synthetic_batch(batch: int, shape: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-channel image and a label map of blobs (coarse random labels, upsampled), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 4, *shape, generator=g)
    coarse = [max(1, s // 8) for s in shape]
    label = torch.randint(0, 4, (batch, 1, *coarse), generator=g).float()
    label = torch.nn.functional.interpolate(label, size=list(shape), mode="nearest").long()
    return image, label


def disable_dropout_note(model: nn.Module) -> bool:
    """Whether the model draws random numbers in training (dropout): parity then includes mask noise."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()) or any(
        type(m).__name__ == "DropPath" and getattr(m, "drop_prob", 0) > 0 for m in model.modules()
    )


GRAD_SAMPLES_PER_TENSOR = 256


def grad_samples(model: nn.Module, scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor]:
    """{parameter name: up to GRAD_SAMPLES_PER_TENSOR of its gradient's values, strided over the tensor
    in logical order (any memory format), fp32, unscaled}, on the model's device. Names are the
    state_dict's, which the speed options keep, so variants compare by name."""
    from seg.train.checkpoint import bare_module

    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    out = {}
    for name, p in bare_module(model).state_dict(keep_vars=True).items():
        if not (isinstance(p, nn.Parameter) and p.requires_grad):
            continue
        stride = max(1, p.numel() // GRAD_SAMPLES_PER_TENSOR)
        grad = torch.zeros_like(p) if p.grad is None else p.grad  # none: zero, as the optimizer takes it
        out[name] = grad.detach().reshape(-1)[::stride][:GRAD_SAMPLES_PER_TENSOR].float() / scale
    return out


def grad_rel_dev(samples: dict[str, torch.Tensor], reference: dict[str, list[float]]) -> dict:
    """{"grad_rel_dev": ||g - g_ref|| / ||g_ref|| over the sampled values of the parameters both have,
    "grad_tensors": how many} (the relative L2 deviation of the first step's gradients)."""
    shared = [n for n in reference if n in samples and samples[n].numel() == len(reference[n])]
    if not shared:
        return {"grad_error": "no parameter of the reference matches this variant's by name and size"}
    got = torch.cat([samples[n].cpu().double() for n in shared])
    want = torch.cat([torch.tensor(reference[n], dtype=torch.float64) for n in shared])
    dev = float((got - want).norm() / want.norm().clamp_min(1e-30))
    return {"grad_rel_dev": dev if math.isfinite(dev) else None, "grad_tensors": len(shared)}


class TrainState:
    """Model, DiceCE, fused AdamW and GradScaler of one variant: `step` is seg.recipe.train_step."""

    def __init__(self, params: Any, cfg: CaseConfig, device: torch.device, state: dict[str, torch.Tensor]):
        from seg import recipe

        self.cfg, self.device = cfg, device
        self.model = build_model(params.model, params.model_options, cfg, device, state)
        self.model.train()
        self.loss_fn = recipe.build_loss()
        self.optimizer = recipe.build_optimizer(self.model, lr=params.lr)
        self.scaler = recipe.make_scaler(cfg.precision, device.type)

    def step(self, image: torch.Tensor, label: torch.Tensor, grads: dict | None = None) -> torch.Tensor:
        """seg.recipe.train_step; with `grads`, also fills it with `grad_samples` of this step's
        gradients, taken between the backward and the optimizer step (parity's gradient check)."""
        from seg.recipe import forward_backward, optimizer_step, train_step
        from seg.speed import step_begin

        step_begin(self.cfg.compile_mode)  # CUDA-graph modes: the last step's outputs are dead
        if grads is None:
            return train_step(
                self.model, image, label, self.loss_fn, self.optimizer, self.scaler, self.cfg.precision
            )
        loss = forward_backward(self.model, image, label, self.loss_fn, self.scaler, self.cfg.precision)
        grads.update(grad_samples(self.model, self.scaler))
        optimizer_step(self.optimizer, self.scaler)
        return loss

    def cpu_bf16_workaround(self, image: torch.Tensor) -> bool:
        """Whether this variant's steps on `image` run with oneDNN off (seg.cpu_bf16): rows say so."""
        from seg import cpu_bf16

        return cpu_bf16.active(self.cfg.precision, self.model, image)

    def attention_kernels(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, int]:
        """The SDPA kernels of one eager forward + backward of this variant's model (the bare module
        under a torch.compile wrapper: compiled graphs call the kernels chosen for the same inputs
        when they were traced); the gradients are dropped, the optimizer does not step."""
        from profiles.attention_kernels import count_attention_kernels
        from seg.recipe import forward_backward
        from seg.train.checkpoint import bare_module

        bare = bare_module(self.model)
        try:
            return count_attention_kernels(
                lambda: forward_backward(bare, image, label, self.loss_fn, self.scaler, self.cfg.precision)
            )
        finally:
            self.optimizer.zero_grad(set_to_none=True)

    def forward_backward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        from seg.recipe import forward_backward
        from seg.speed import step_begin

        step_begin(self.cfg.compile_mode)
        loss = forward_backward(self.model, image, label, self.loss_fn, self.scaler, self.cfg.precision)
        self.optimizer.zero_grad(set_to_none=True)
        return loss
