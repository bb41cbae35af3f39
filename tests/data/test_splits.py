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


def _check_folds(s: dict) -> None:
    pool = sorted(s["train"] + s["val"])
    vals = [v for f in s["folds"] for v in f["val"]]
    assert sorted(vals) == pool  # every pool case validates exactly once
    for f in s["folds"]:
        assert sorted(f["train"] + f["val"]) == pool and not set(f["train"]) & set(s["test"])


def test_a_re_split_keeps_every_case_where_it_was_when_cases_come_and_go():
    from seg.data.splits import extend_splits

    many = [f"BraTS2021_{i:05d}" for i in range(1000)]
    old = make_splits(many)
    fresh = make_splits(many[1:])  # what a plain re-split does with one case fewer: most test cases move
    assert len(set(old["test"]) & set(fresh["train"])) > 50
    for ids in (many[1:], [*many, *(f"BraTS2021_9{i:04d}" for i in range(30))]):
        new = extend_splits(old, ids)
        for name in ("train", "val", "test"):
            assert set(old[name]) & set(ids) <= set(new[name]), name  # nobody moved
        assert sorted(new["train"] + new["val"] + new["test"]) == sorted(ids)
        _check_folds(new)
        for f_old, f_new in zip(old["folds"], new["folds"], strict=True):  # nor between folds
            assert set(f_old["val"]) & set(ids) <= set(f_new["val"])
    # growing from a tiny set: the new cases fill the shares as a fresh split would size them
    small = make_splits(IDS[:10])
    grown = extend_splits(small, IDS + [f"BraTS2021_{i:05d}" for i in range(50, 110)])
    assert (len(grown["train"]), len(grown["val"]), len(grown["test"])) == (88, 11, 11)
    assert set(small["test"]) <= set(grown["test"])
    _check_folds(grown)
    # a pool too small for the folds asked for gets all of them once it can
    two = make_splits(IDS[:2])
    assert len(two["folds"]) == 2 and len(extend_splits(two, IDS)["folds"]) == 5


def test_prep_re_runs_extend_the_splits_and_data_splits_makes_them_anew(tmp_path, capsys):
    old = make_splits(IDS)
    (tmp_path / "splits.json").write_text(__import__("json").dumps(old))
    kept = load_splits(write_splits(tmp_path, ids=IDS[1:], keep=True).parent)
    assert set(old["test"]) - {IDS[0]} == set(kept["test"]) and set(old["val"]) - {IDS[0]} == set(kept["val"])
    assert load_splits(write_splits(tmp_path, ids=IDS[1:]).parent) == make_splits(IDS[1:])
    # splits made by `data splits` with their own seed, fractions and folds: a prep re-run (its defaults,
    # or another seed asked for) keeps them, and says so when asked for others
    custom = load_splits(write_splits(tmp_path, ids=IDS, seed=7, fractions=(0.7, 0.15, 0.15), folds=3).parent)
    for seed in (None, 9):
        again = load_splits(write_splits(tmp_path, ids=IDS, seed=seed, keep=True).parent)
        assert {k: again[k] for k in ("seed", "train", "val", "test", "folds")} == \
            {k: custom[k] for k in ("seed", "train", "val", "test", "folds")}
    assert "kept as it is (seed 7, 3 folds), not --split-seed 9" in capsys.readouterr().err


def test_a_case_that_drops_out_and_comes_back_gets_its_place_back():
    """A test case failing one prep re-run and prepared again by the next must not land in training
    (nor a validation case in another fold)."""
    from seg.data.splits import extend_splits

    many = [f"BraTS2021_{i:05d}" for i in range(50)]
    s0 = make_splits(many)
    gone_test, gone_val = s0["test"][0], s0["folds"][2]["val"][0]
    s1 = extend_splits(s0, [i for i in many if i not in (gone_test, gone_val)] + ["BraTS2021_99999"])
    assert s1["absent"][gone_test] == {"split": "test", "fold": None}
    assert s1["absent"][gone_val]["fold"] == 2
    s2 = extend_splits(s1, many + ["BraTS2021_99999"])
    assert gone_test in s2["test"] and gone_val in s2["folds"][2]["val"] and "absent" not in s2
    _check_folds(s2)
    # rounding both held-out shares up must not ask for more cases than there are
    tiny = make_splits(["a", "b", "c"], fractions=(0, 0.5, 0.5))
    assert sorted(tiny["train"] + tiny["val"] + tiny["test"]) == ["a", "b", "c"]


def test_a_re_run_on_a_single_labelled_case_keeps_it_without_folds():
    from seg.data.splits import extend_splits

    one = make_splits(IDS[:1])
    assert extend_splits(one, IDS[:1]) == one  # a prep re-run on one case raised from min() before


def test_a_new_case_tied_between_val_and_test_joins_val():
    """extend_splits places a new case where its split is furthest below target, ties to train, then
    val: 14 cases split 12/1/1; at 15 val and test both want round(1.5) = 2."""
    from seg.data.splits import extend_splits

    old = make_splits(IDS[:14])
    assert [len(old[k]) for k in ("train", "val", "test")] == [12, 1, 1]
    new = extend_splits(old, IDS[:15])
    assert [len(new[k]) for k in ("train", "val", "test")] == [12, 2, 1] and IDS[14] in new["val"]


def test_a_zero_test_fraction_holds_out_nothing():
    splits = make_splits(IDS[:10], fractions=(0.9, 0.1, 0.0))
    assert splits["test"] == [] and len(splits["val"]) == 1 and len(splits["train"]) == 9
