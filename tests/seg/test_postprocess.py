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


def test_the_volume_is_chosen_by_mean_et_dice_smallest_on_a_tie():
    from seg.postprocess import choose_min_et, et_dice_by_threshold

    ref_without_et = np.zeros((4, 4, 4), np.uint8)
    pred = ref_without_et.copy()
    pred[0, 0, :2] = 3  # a 2-voxel false ET: Dice 0 until the threshold removes it, then 1 (both empty)
    assert et_dice_by_threshold(pred, ref_without_et, 10.0, (0.0, 20.0, 21.0)) == [0.0, 0.0, 1.0]
    ref_with_et = pred.copy()  # the same 2 voxels are right: removing them costs the case its ET
    assert et_dice_by_threshold(pred, ref_with_et, 10.0, (0.0, 20.0, 21.0)) == [1.0, 1.0, 0.0]
    rows = [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    chosen = choose_min_et(rows, (0.0, 20.0, 21.0))
    assert chosen["min_et_mm3"] == 0.0 and chosen["mean_et_dice"] == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert choose_min_et(rows[:1] + rows[2:], (0.0, 20.0, 21.0))["min_et_mm3"] == 21.0
    assert choose_min_et([[0.5, 0.9, 0.9]], (0.0, 20.0, 21.0))["min_et_mm3"] == 20.0  # the smaller of two
    assert choose_min_et([[0.5, 0.9, 0.9]], (0.0, 21.0, 20.0))["min_et_mm3"] == 20.0  # whatever the order
    assert choose_min_et([], (0.0, 20.0)) == {"candidates_mm3": [0.0, 20.0], "mean_et_dice": None,
                                             "min_et_mm3": 0.0, "cases": 0}


def test_cv_reports_the_tuned_post_processing_and_refuses_two_volumes(tmp_path, capsys):
    from seg.cv import _postprocess_line
    from segbench.cli import main

    post = {"candidates_mm3": [0.0, 50.0], "mean_et_dice": [0.7, 0.8], "min_et_mm3": 50.0, "cases": 4}
    line = _postprocess_line(post)
    assert "under 50 mm³ becomes necrotic core (mean ET Dice 0.8000, without: 0.7000)" in line
    assert "none helps (mean ET Dice without it 0.7000)" in _postprocess_line(
        {**post, "mean_et_dice": [0.7, 0.6], "min_et_mm3": 0.0})
    assert "no out-of-fold validation case could be scored" in _postprocess_line(
        {**post, "mean_et_dice": None, "min_et_mm3": 0.0, "cases": 0})
    rc = main(["cv", "--data", str(tmp_path), "--out", str(tmp_path / "cv"), "--min-et-mm3", "300",
               "--tune-min-et"])
    assert rc == 2 and "give the volume or let cv choose it, not both" in capsys.readouterr().err
    assert not (tmp_path / "cv").exists()
