"""BraTS metrics: region Dice and HD95 (mm), the seed's per-label Dice, and a batched torch Dice.

Regions (the BraTS challenge's): ET = enhancing tumour, TC = tumour core, WT = whole tumour.
- 2021 labels {0,1,2,4}: ET = {4}, TC = {1,4}, WT = {1,2,4}.
- 2023 labels {0,1,2,3} and prepared-space labels 0..3: ET = {3}, TC = {1,3}, WT = {1,2,3}.

Conventions for empty masks (as the BraTS evaluation): both empty → Dice 1, HD95 0; exactly one
empty → Dice 0, HD95 373.13 mm (the diagonal of the 240×240×155 1 mm BraTS volume).
Sensitivity TP/(TP+FN) and specificity TN/(TN+FP) over the whole volume, as the BraTS
leaderboards list them beside Dice and HD95; a reference without the region has nothing to miss:
sensitivity 1 (its false positives count in Dice, HD95 and specificity).

HD95 is MONAI's `compute_hausdorff_distance(percentile=95, directed=False, spacing=...)`: the
edge voxels of each mask (mask XOR its binary erosion), the Euclidean distance in mm (voxel
indices scaled by the spacing) from every edge voxel of one mask to the nearest edge voxel of the
other, taken in both directions; the 95th percentile (linear interpolation, `torch.quantile`) of
each directed set; the larger of the two. It counts voxels, not surface areas (the DeepMind
`surface_distance` package weights by surface element area), so values can differ from that
package by a fraction of a voxel.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

REGIONS = ("ET", "TC", "WT")
METRICS = ("dice", "hd95", "sensitivity", "specificity")  # per region, in `evaluate_case`'s records
CONVENTIONS = ("2021", "2023", "prepared")
REGION_LABELS: dict[str, dict[str, tuple[int, ...]]] = {
    "2021": {"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)},
    "2023": {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)},
    "prepared": {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)},
}
LABEL_VALUES = {"2021": (0, 1, 2, 4), "2023": (0, 1, 2, 3), "prepared": (0, 1, 2, 3)}
# Diagonal of the BraTS volume, sqrt(240² + 240² + 155²) mm: the HD95 BraTS assigns when exactly one
# of prediction and reference is empty.
EMPTY_HD95_MM = 373.13


def _check_convention(convention: str) -> None:
    if convention not in REGION_LABELS:
        raise ValueError(f"unknown label convention {convention!r}; choose from {', '.join(CONVENTIONS)}")


def region_masks(labels: np.ndarray, convention: str = "2021") -> dict[str, np.ndarray]:
    """Boolean masks {"ET", "TC", "WT"} of a label map in `convention`."""
    _check_convention(convention)
    return {region: np.isin(labels, values) for region, values in REGION_LABELS[convention].items()}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(pred & ref) / total)


def sensitivity_specificity(pred: np.ndarray, ref: np.ndarray, volume_voxels: int | None = None
                            ) -> tuple[float, float]:
    """(TP/(TP+FN), TN/(TN+FP)) of two boolean masks; `volume_voxels`: the whole volume's voxel count
    when the masks are a crop of it (every voxel outside is a true negative)."""
    tp = np.count_nonzero(pred & ref)
    fn = np.count_nonzero(ref) - tp
    fp = np.count_nonzero(pred) - tp
    tn = (pred.size if volume_voxels is None else volume_voxels) - tp - fn - fp
    return (float(tp / (tp + fn)) if tp + fn else 1.0), (float(tn / (tn + fp)) if tn + fp else 1.0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two boolean masks (see module doc)."""
    from monai.metrics import compute_hausdorff_distance

    pred_any, ref_any = bool(pred.any()), bool(ref.any())
    if not pred_any and not ref_any:
        return 0.0
    if pred_any != ref_any:
        return EMPTY_HD95_MM
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated `always_return_as_numpy` argument internally.
        warnings.simplefilter("ignore", FutureWarning)
        distance = compute_hausdorff_distance(
            torch.from_numpy(np.ascontiguousarray(pred))[None, None],
            torch.from_numpy(np.ascontiguousarray(ref))[None, None],
            include_background=True,
            percentile=95,
            directed=False,
            spacing=[float(s) for s in spacing_mm],
        )
    return float(distance[0, 0])


def check_labels(labels: np.ndarray, convention: str, name: str = "label map") -> None:
    """Raise ValueError naming `name` if `labels` holds values outside `convention`."""
    _check_convention(convention)
    present = np.unique(labels)
    outside = sorted(set(present.tolist()) - set(LABEL_VALUES[convention]))
    if outside:
        raise ValueError(
            f"{name}: label values {outside} are outside the {convention} convention "
            f"{list(LABEL_VALUES[convention])} (wrong --labels?)"
        )


def detect_convention(*label_maps: np.ndarray) -> str:
    """2021 if any map holds label 4, 2023 if any holds 3; both → error; neither → 2021 (same regions)."""
    has4 = any(bool((m == 4).any()) for m in label_maps)
    has3 = any(bool((m == 3).any()) for m in label_maps)
    if has3 and has4:
        raise ValueError("label maps hold both 3 and 4: mixed 2021/2023 conventions; pass --labels")
    return "2023" if has3 else "2021"


def _labelled_box(pred: np.ndarray, ref: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    """The bounding box of the voxels labelled in either map, grown by `margin` and clipped to the
    volume (one voxel when neither holds a label). Dice counts voxels and MONAI's HD95 finds edges
    within the masks' own box with a margin of 1: both give on the box what they give on the whole
    volume, ~2x faster on a 240x240x155 BraTS case (most of it is background; 2-core CPU)."""
    labelled = (pred != 0) | (ref != 0)
    box = []
    for axis in range(labelled.ndim):
        hit = np.flatnonzero(labelled.any(axis=tuple(a for a in range(labelled.ndim) if a != axis)))
        if hit.size == 0:
            return tuple(slice(0, 1) for _ in range(labelled.ndim))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, labelled.shape[axis])))
    return tuple(box)


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    convention: str = "2021",
) -> dict[str, dict[str, float]]:
    """{"ET": {"dice", "hd95", "sensitivity", "specificity"}, "TC": {...}, "WT": {...}} for one case
    (label maps on one grid)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    volume_voxels = pred.size
    box = _labelled_box(pred, ref)  # the metrics only see labelled voxels and their neighbours
    pred, ref = pred[box], ref[box]
    pred_masks = region_masks(pred, convention)
    ref_masks = region_masks(ref, convention)
    out = {}
    for region in REGIONS:
        p, r = pred_masks[region], ref_masks[region]
        sens, spec = sensitivity_specificity(p, r, volume_voxels)
        out[region] = {"dice": dice(p, r), "hd95": hd95(p, r, spacing_mm), "sensitivity": sens,
                       "specificity": spec}
    return out


def mean_over_cases(cases: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-region mean of each metric over cases (the "mean" block of `segbench eval`)."""
    if not cases:
        return {}
    return {
        region: {
            metric: float(np.mean([case[region][metric] for case in cases.values()]))
            for metric in METRICS
        }
        for region in REGIONS
    }



def rates_table(mean: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of the mean sensitivity and specificity per region, as BraTS leaderboards list
    them beside Dice and HD95 (specificity is over the whole volume: it sits near 1)."""
    lines = ["| mean | " + " | ".join(REGIONS) + " |", "|---" * (len(REGIONS) + 1) + "|"]
    for metric in ("sensitivity", "specificity"):
        lines.append(f"| {metric} | " + " | ".join(f"{mean[r][metric]:.4f}" for r in REGIONS) + " |")
    return "\n".join(lines)

def seed_dice(
    pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, convention: str = "2021"
) -> float:
    """The seed project's metric: MONAI DiceMetric over labels 1..3 (one-hot, background excluded).

    As MONAI's default (`ignore_empty=True`), a label absent from the reference gives NaN and is
    left out of the mean; per label, not per region, so it is not comparable to ET/TC/WT Dice.
    Computed from one joint label count (MONAI's `compute_dice` on one-hot maps, the same numbers, took
    ~2 s of a 240x240x155 case's ~4 s evaluation).
    """
    _check_convention(convention)
    pred_a, ref_a = np.asarray(pred).reshape(-1), np.asarray(ref).reshape(-1)
    if convention == "2021":  # 4 → 3 as the seed's prep did
        pred_a, ref_a = np.where(pred_a == 4, 3, pred_a), np.where(ref_a == 4, 3, ref_a)
    joint = np.bincount(ref_a.astype(np.int64) * 4 + pred_a, minlength=16).reshape(4, 4)  # [ref, pred]
    ref_sums, pred_sums = joint.sum(axis=1), joint.sum(axis=0)
    per_label = [
        2 * joint[label, label] / (ref_sums[label] + pred_sums[label]) if ref_sums[label] else np.nan
        for label in (1, 2, 3)
    ]
    return float("nan") if np.all(np.isnan(per_label)) else float(np.nanmean(per_label))


def region_voxels(labels: np.ndarray, convention: str = "2021") -> dict[str, int]:
    """Voxel count of each region {"ET", "TC", "WT"} in a label map (one bincount)."""
    _check_convention(convention)
    counts = np.bincount(np.asarray(labels).reshape(-1).astype(np.int64), minlength=5)
    return {region: int(counts[list(values)].sum()) for region, values in REGION_LABELS[convention].items()}


N_PREPARED_LABELS = 4


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, n_labels: int = N_PREPARED_LABELS
) -> torch.Tensor:
    """Per-sample joint label counts [B, n_labels (pred), n_labels (target)] as float64.

    One `bincount` over pred·n + target: a single pass over the volume (much cheaper than one
    boolean mask and reduction per region), from which every region's overlap follows.
    """
    batch = pred.shape[0]
    offsets = torch.arange(batch, device=pred.device)[:, None] * n_labels * n_labels
    index = pred.reshape(batch, -1).long() * n_labels + target.reshape(batch, -1).long() + offsets
    counts = torch.bincount(index.flatten(), minlength=batch * n_labels * n_labels)
    return counts.reshape(batch, n_labels, n_labels).double()


def region_dice(logits_or_labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batched ET/TC/WT Dice in prepared space (labels 0..3), on the inputs' device.

    `logits_or_labels`: [B, C, *spatial] float logits or probabilities (argmax over C), or integer
    labels [B, 1, *spatial] / [B, *spatial]. `target`: integer labels [B, 1, *spatial] or
    [B, *spatial]. Returns float32 [B, 3] (columns ET, TC, WT); both empty → 1, one empty → 0.
    """
    if logits_or_labels.is_floating_point():
        pred = logits_or_labels.argmax(dim=1)
    else:
        pred = logits_or_labels
    # Either side may carry the singleton channel dimension; drop it where the other lacks it.
    if pred.dim() == target.dim() + 1:
        pred = pred[:, 0]
    elif target.dim() == pred.dim() + 1:
        target = target[:, 0]
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
        )
    counts = confusion_counts(pred, target)
    # membership[r, l] = 1 when label l belongs to region r (ET, TC, WT).
    membership = torch.zeros(len(REGIONS), N_PREPARED_LABELS, dtype=torch.float64, device=counts.device)
    for r, region in enumerate(REGIONS):
        membership[r, list(REGION_LABELS["prepared"][region])] = 1.0
    intersection = torch.einsum("rp,bpt,rt->br", membership, counts, membership)
    total = torch.einsum("rp,bpt->br", membership, counts) + torch.einsum("rt,bpt->br", membership, counts)
    dice_ = torch.where(total > 0, 2 * intersection / total.clamp_min(1), torch.ones_like(total))
    return dice_.float()
