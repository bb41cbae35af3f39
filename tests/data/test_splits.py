"""seg.data.splits: disjoint, complete, reproducible train/val/test and k-fold splits."""

from __future__ import annotations

import random

import pytest

from seg.data.splits import load_splits, make_splits, write_splits

IDS = [f"BraTS2021_{i:05d}" for i in range(50)]


def test_fractions_disjoint_and_complete():
    s = make_splits(IDS)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (40, 5, 5)
    assert sorted(s["train"] + s["val"] + s["test"]) == IDS
    assert s["seed"] == 200


def test_reproducible_whatever_the_input_order():
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert make_splits(shuffled) == make_splits(IDS)
    assert make_splits(IDS, seed=201)["test"] != make_splits(IDS)["test"]


def test_folds_partition_train_plus_val():
    s = make_splits(IDS, folds=5)
    pool = sorted(s["train"] + s["val"])
    assert len(s["folds"]) == 5
    vals = [v for f in s["folds"] for v in f["val"]]
    assert sorted(vals) == pool  # every case validates exactly once
    for f in s["folds"]:
        assert sorted(f["train"] + f["val"]) == pool and not set(f["train"]) & set(f["val"])
        assert not set(f["train"]) & set(s["test"])


def test_tiny_sets_still_get_val_and_test():
    s = make_splits(IDS[:3])
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (1, 1, 1)
    assert len(s["folds"]) == 2
    assert make_splits(IDS[:1])["folds"] == []


def test_write_then_load(tmp_path):
    path = write_splits(tmp_path, IDS[:10], seed=5, folds=3)
    assert path == tmp_path / "splits.json"
    assert load_splits(tmp_path) == make_splits(IDS[:10], seed=5, folds=3)


def test_fewer_than_two_folds_are_refused():
    with pytest.raises(ValueError, match="--folds 1: cross-validation needs at least 2 folds"):
        make_splits([f"c{i}" for i in range(6)], folds=1)
