"""What the network's output channels mean: the training target, from loss to label map.

- "labels" (the seed's recipe, the default): 4 channels, one per prepared label 0..3 (background,
  necrotic core, edema, enhancing), softmax; loss DiceCE with the labels one-hot, background left
  out of the Dice; prediction = argmax.
- "regions" (nnU-Net's BraTS configuration and MONAI's BraTS tutorials): 3 channels, the nested
  regions the challenge scores — WT = {1,2,3}, TC = {1,3}, ET = {3} — each its own sigmoid, so the
  network learns the nesting it is scored on; loss Dice (sigmoid, per channel) + binary cross-entropy
  (nnU-Net's DC_and_BCE); prediction = each region above 0.5, painted WT → 2, then TC → 1, then
  ET → 3 (nnU-Net's regions_class_order), so the label map is nested by construction.

The loss takes labels [B, 1, *spatial] for both (the region maps are made on the fly), so the data
pipeline, the harness and deep supervision (one loss per head) do not change with the target.
Probabilities are averaged (TTA, ensembles) before `to_labels`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from seg.metrics import REGION_LABELS

TARGETS = ("labels", "regions")
# Channel order of the "regions" head, and the label each region paints (outermost first).
REGION_ORDER = ("WT", "TC", "ET")
_PAINT = {"WT": 2, "TC": 1, "ET": 3}
REGION_THRESHOLD = 0.5


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")


def out_channels(target: str) -> int:
    check_target(target)
    return 4 if target == "labels" else len(REGION_ORDER)


def region_maps(label: torch.Tensor) -> torch.Tensor:
    """Prepared labels [B, 1, *spatial] (0..3) → float region maps [B, 3, *spatial] in REGION_ORDER."""
    members = REGION_LABELS["prepared"]
    return torch.cat([sum(label == v for v in members[r]).bool() for r in REGION_ORDER], dim=1).float()


def probabilities(logits: torch.Tensor, target: str) -> torch.Tensor:
    """Float32 probabilities of logits [B, C, *spatial]: softmax over labels, or one sigmoid per region."""
    logits = logits.float()
    return torch.softmax(logits, dim=1) if target == "labels" else torch.sigmoid(logits)


def to_labels(probs: torch.Tensor, target: str) -> torch.Tensor:
    """Prepared label map [B, *spatial] (int64, 0..3) from probabilities (or logits, for "labels")."""
    if target == "labels":
        return probs.argmax(dim=1)
    label = torch.zeros(probs.shape[:1] + probs.shape[2:], dtype=torch.int64, device=probs.device)
    for channel, region in enumerate(REGION_ORDER):  # inner regions overwrite outer ones
        label[probs[:, channel] > REGION_THRESHOLD] = _PAINT[region]
    return label


def mean_to_labels(total: torch.Tensor, models: int, target: str) -> torch.Tensor:
    """An ensemble's label map from its members' summed probabilities [B, C, *spatial]: the mean is
    thresholded ("regions": two members at 0.3 are 0.3, not the 0.6 of their sum)."""
    return to_labels(total / models, target)


class RegionLoss(nn.Module):
    """Dice (sigmoid, each region its own channel, none left out) + binary cross-entropy, on logits
    [B, 3, *spatial] against prepared labels [B, 1, *spatial]."""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        regions = region_maps(label)
        return self.dice(logits, regions) + self.bce(logits, regions)
