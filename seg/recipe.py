"""The seed project's training recipe, as small functions shared by `seg.train` and `bench`.

DiceCE (softmax, one-hot target, background excluded from Dice; deep-supervision heads weighted
by MONAI's DeepSupervisionLoss), fused AdamW, linear warm-up
then cosine decay stepped per optimizer step, and AMP: bf16 autocast, or fp16 autocast with a
GradScaler. One training step is `train_step`, so the harness times exactly what training runs.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn as nn

from profiles.nvtx import nvtx_range
from seg import cpu_bf16

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """Autocast for `precision` ("fp32" runs without autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_AUTOCAST_DTYPE[precision])


def make_scaler(precision: str, device_type: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")


class SegmentationLoss(nn.Module):
    """The target's loss on logits [B, C, *spatial] against labels [B, 1, *spatial] (seg.targets):
    DiceCE over the 4 labels (softmax, the seed's), or Dice + BCE over the 3 nested regions (sigmoid).

    A deeply supervised output — MONAI DynUNet with `deep_supervision=True` returns its heads in
    training stacked on dim 1, [B, 1 + deep_supr_num, C, *spatial], each upsampled to full size —
    is scored by MONAI's DeepSupervisionLoss: the same loss per head, weights 1, 1/2, 1/4, ...
    (floor 1/16; MONAI's "exp" mode), normalised to sum to 1 as nnU-Net's are, so the training loss
    is on the scale of the validation loss (the main head's) in log.csv and the curves. In eval mode
    the network returns the main head only, so validation and inference see plain logits.
    """

    def __init__(self, target: str = "labels") -> None:
        super().__init__()
        from monai.losses import DeepSupervisionLoss, DiceCELoss

        from seg.targets import RegionLoss, check_target

        check_target(target)
        if target == "labels":
            self.head_loss: nn.Module = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
        else:
            self.head_loss = RegionLoss()
        self.deep_supervision = DeepSupervisionLoss(self.head_loss, weight_mode="exp")

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.ndim == label.ndim + 1:
            heads = list(logits.unbind(1))
            return self.deep_supervision(heads, label) / sum(self.deep_supervision.get_weights(len(heads)))
        return self.head_loss(logits, label)


def build_loss(target: str = "labels") -> nn.Module:
    return SegmentationLoss(target)


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """AdamW with the fused implementation (one kernel for all parameters) where torch has it."""
    params = [p for p in model.parameters() if p.requires_grad]
    device_type = params[0].device.type
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rebase_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                    lr: float, weight_decay: float, step: int) -> None:
    """A restored optimizer and schedule put at `step` of this run's schedule, with this run's peak lr
    and weight decay. The restored counter counted the checkpoint's own steps per epoch: resumed
    with more processes or a larger accum it would sit past the end (lr 0 from then on)."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    scheduler.last_epoch = step
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group.update(initial_lr=lr, weight_decay=weight_decay, lr=lr * factor(step))
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # get_last_lr()


def forward_backward(
    model: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    loss_fn: nn.Module,
    scaler: torch.amp.GradScaler,
    precision: str,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """Forward under autocast, loss, backward (scaled for fp16). Returns the unscaled loss, detached.

    `loss_scale` divides the loss for gradient accumulation over several micro-batches.
    """
    with cpu_bf16.guard(precision, model, image):  # a oneDNN bug: see seg.cpu_bf16
        with autocast(precision, image.device.type):
            with nvtx_range("forward"):
                logits = model(image)
            with nvtx_range("loss"):
                # The loss runs in fp32: softmax/log over low-precision logits loses the small classes.
                loss = loss_fn(logits.float(), label)
        with nvtx_range("backward"):
            scaler.scale(loss / loss_scale).backward()
    return loss.detach()


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: Any | None = None,
) -> None:
    with nvtx_range("optimizer"):
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()


def train_step(
    model: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: str,
    scheduler: Any | None = None,
) -> torch.Tensor:
    """One full optimizer step on one batch: what `bench`'s `train_step` workload times."""
    loss = forward_backward(model, image, label, loss_fn, scaler, precision)
    optimizer_step(optimizer, scaler, scheduler)
    return loss
