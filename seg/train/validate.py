"""Per-epoch validation: DiceCE loss and ET/TC/WT region Dice on full prepared volumes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from profiles.nvtx import nvtx_range
from seg.metrics import REGIONS, region_dice
from seg.recipe import autocast
from seg.targets import probabilities, to_labels
from seg.train.distributed import Layout, all_reduce_sum

SLIDING_WINDOW_OVERLAP = 0.25


@torch.no_grad()
def validate(
    model: nn.Module,
    loader,
    loss_fn: nn.Module,
    precision: str,
    device: torch.device,
    layout: Layout,
    patch: Sequence[int] | None = None,
    target: str = "labels",
) -> dict[str, float]:
    """Mean validation loss and Dice over every case of `loader` (summed over DDP ranks).

    With `patch` the model saw only crops in training, so volumes go through MONAI's sliding
    window with roi = patch; otherwise the whole volume is one forward pass. `target` (seg.targets)
    says how the output channels become a label map.
    Returns {"val_loss", "val_dice" (mean of the three regions), "val_dice_et", ...}.
    """
    model.eval()
    # Sums over cases: loss, Dice per region, case count.
    totals = torch.zeros(2 + len(REGIONS), dtype=torch.float64, device=device)
    for batch in loader:
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        with nvtx_range("inference"), autocast(precision, device.type):
            if patch is None:
                logits = model(image)
            else:
                from monai.inferers import sliding_window_inference

                logits = sliding_window_inference(
                    image, roi_size=tuple(patch), sw_batch_size=1, predictor=model,
                    overlap=SLIDING_WINDOW_OVERLAP,
                )
        logits = logits.float()
        # The loss is a batch mean; weight it by the batch so the epoch value is a per-case mean.
        totals[0] += loss_fn(logits, label).double() * image.shape[0]
        totals[1] += image.shape[0]
        totals[2:] += region_dice(to_labels(probabilities(logits, target), target), label).double().sum(0)
    all_reduce_sum(totals, layout)
    count = totals[1].item()
    if count == 0:
        raise ValueError("validation split is empty")
    means = (totals / count).tolist()
    result = {"val_loss": means[0], "val_dice": sum(means[2:]) / len(REGIONS)}
    result.update({f"val_dice_{r.lower()}": v for r, v in zip(REGIONS, means[2:], strict=True)})
    return result
