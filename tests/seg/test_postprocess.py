"""seg.postprocess: a small predicted enhancing tumour becomes necrotic core, by volume in mm³."""

from __future__ import annotations

import numpy as np
import pytest

from seg.infer import InferConfig
from seg.postprocess import small_et_to_core


def test_small_et_becomes_core_and_the_other_regions_stay():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:5, 1:5, 1:5] = 2
    labels[2:4, 2:4, 2:4] = 1
    labels[2, 2, 2:4] = 3  # 2 ET voxels
    out, moved = small_et_to_core(labels, voxel_mm3=8.0, min_et_mm3=17.0)  # 16 mm³ < 17
    assert moved == 2 and not (out == 3).any() and (labels == 3).sum() == 2  # the input is left as it was
    assert ((out == 1) == np.isin(labels, [1, 3])).all() and ((out == 2) == (labels == 2)).all()
    same, moved = small_et_to_core(labels, voxel_mm3=8.0, min_et_mm3=16.0)  # not smaller: kept
    assert moved == 0 and same is labels
    assert small_et_to_core(labels, 1.0, 0.0)[1] == 0  # 0: off
    assert small_et_to_core(np.zeros((2, 2, 2), np.uint8), 1.0, 100.0)[1] == 0  # no ET: nothing to move


@pytest.mark.parametrize("volume", [-1.0, float("nan"), float("inf")])
def test_a_volume_that_is_not_one_is_refused(volume):
    with pytest.raises(ValueError, match=f"--min-et-mm3 {volume}: a volume in mm³"):
        InferConfig(min_et_mm3=volume)
