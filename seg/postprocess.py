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
