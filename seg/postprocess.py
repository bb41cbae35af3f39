"""Post-processing of predicted label maps (labels 0..3: 1 necrotic core, 2 edema, 3 enhancing).

`small_et_to_core`: a predicted enhancing tumour (ET) smaller than a volume becomes necrotic core.
BraTS scores a case whose reference has no ET as Dice 1 when the prediction has none and 0
otherwise, so a few false-positive ET voxels cost a whole case; top BraTS entries (nnU-Net's among
them) replace a small predicted ET by core for that reason. The core (TC = NCR + ET) and the whole
tumour are unchanged by construction. The threshold is a volume in mm³, so one value means the same
on the source grid (≈1 mm voxels) and on a prepared 128³ grid; tune it on validation data (values
of a few hundred mm³ are common).
"""

from __future__ import annotations

import numpy as np

NECROTIC_CORE, ENHANCING = 1, 3


def check_min_et_mm3(min_et_mm3: float) -> None:
    """ValueError unless a volume in mm³ >= 0 (NaN too: it would remove every ET)."""
    if not 0 <= min_et_mm3 < float("inf"):
        raise ValueError(f"--min-et-mm3 {min_et_mm3}: a volume in mm³, at least 0")


def small_et_to_core(labels: np.ndarray, voxel_mm3: float, min_et_mm3: float) -> tuple[np.ndarray, int]:
    """(labels with ET relabelled as core when its total volume is under `min_et_mm3`, voxels
    relabelled). `labels` uses 0..3; it is not modified. `min_et_mm3` 0 changes nothing."""
    et = labels == ENHANCING
    count = int(et.sum())
    if count == 0 or count * voxel_mm3 >= min_et_mm3:
        return labels, 0
    out = labels.copy()
    out[et] = NECROTIC_CORE
    return out, count


# volumes tried when the threshold is chosen on validation data (`segbench cv --tune-min-et`)
MIN_ET_CANDIDATES_MM3 = (0.0, 50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0)


def et_dice_by_threshold(pred: np.ndarray, ref: np.ndarray, voxel_mm3: float,
                         candidates: tuple[float, ...] = MIN_ET_CANDIDATES_MM3) -> list[float]:
    """One case's ET Dice (BraTS's: 1 when both are empty) after `small_et_to_core` at each volume.
    `pred`, `ref`: labels 0..3 on one grid."""
    from seg.metrics import dice

    ref_et = ref == ENHANCING
    return [dice(small_et_to_core(pred, voxel_mm3, volume)[0] == ENHANCING, ref_et) for volume in candidates]


def choose_min_et(per_case: list[list[float]], candidates: tuple[float, ...] = MIN_ET_CANDIDATES_MM3) -> dict:
    """The volume whose mean ET Dice over the cases (rows of `et_dice_by_threshold`) is highest, the
    smallest on a tie (0: off, when nothing gains or there are no cases):
    {"candidates_mm3", "mean_et_dice" (None without cases), "min_et_mm3", "cases"}."""
    if not per_case:
        return {"candidates_mm3": list(candidates), "mean_et_dice": None, "min_et_mm3": 0.0, "cases": 0}
    means = np.mean(np.asarray(per_case, dtype=np.float64), axis=0)
    best = max(means)
    chosen = min(c for c, m in zip(candidates, means, strict=True) if m >= best - 1e-12)
    return {"candidates_mm3": list(candidates), "mean_et_dice": [float(m) for m in means],
            "min_et_mm3": float(chosen), "cases": len(per_case)}
