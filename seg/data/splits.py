"""Train/val/test and k-fold splits of prepared cases, kept in `splits.json` beside the data.

Reproducible: ids are sorted before one seeded shuffle, so the same ids and seed give the same
splits whatever order they were found in. Folds cover train+val (test stays held out). A re-run of
`data prep` extends the existing splits (cases come and go; none moves), where `data splits` makes
them anew.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SPLITS = "splits.json"


def make_splits(ids, seed: int = 200, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                folds: int = 5) -> dict:
    """{"seed", "fractions", "train", "val", "test", "folds": [{"train", "val"}, ...]}.
    With 3 or more ids, val and test get at least one id each (tiny demo sets stay usable)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    if folds < 2:
        raise ValueError(f"--folds {folds}: cross-validation needs at least 2 folds")
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    want = _targets(len(order), fractions)
    n_train, n_val = want["train"], want["val"]
    train, val, test = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    pool = train + val  # already shuffled: chunk i is fold i's validation set
    return {"seed": seed, "fractions": list(fractions), "k": folds, "train": sorted(train),
            "val": sorted(val), "test": sorted(test), "folds": _folds(pool, _fold_count(pool, folds))}


def _fold_count(pool: list[str], folds: int) -> int:
    return min(folds, len(pool)) if len(pool) >= 2 else 0


def _folds(pool: list[str], k: int) -> list[dict]:
    """k folds over `pool` in its (shuffled) order: chunk i validates fold i, the rest trains it."""
    return [{"train": sorted(set(pool) - set(pool[i::k])), "val": sorted(pool[i::k])} for i in range(k)]


def _targets(n: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """How many of n cases each split should hold: make_splits' rounding and its one-each rule."""
    total = sum(fractions)
    n_val, n_test = (round(n * f / total) for f in fractions[1:])
    if n >= 3:
        n_val = max(1, n_val) if fractions[1] > 0 else n_val
        n_test = max(1, n_test) if fractions[2] > 0 else n_test
    n_val = min(n_val, n)  # rounding both up (0, .5, .5 of 3) must not ask for more cases than there are
    n_test = min(n_test, n - n_val)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def extend_splits(old: dict, ids, folds: int = 5) -> dict:
    """`old` splits for the cases `ids` now holds, moving none of the cases both know: a case gone is
    set aside with its place (`absent`: split and fold) and gets that place back when it returns; a
    new one (in a seeded order) joins the split furthest below its share, and the fold with the
    fewest validation cases. Re-splitting from scratch would move test cases a model was scored on
    into training (one case fewer reshuffles everything). Folds are made anew only when their number
    must change (a pool that was too small for them)."""
    if folds < 2:
        raise ValueError(f"--folds {folds}: cross-validation needs at least 2 folds")
    ids = set(ids)
    absent = {case: dict(place) for case, place in old.get("absent", {}).items() if case not in ids}
    for name in ("train", "val", "test"):
        absent.update({i: {"split": name, "fold": None} for i in old[name] if i not in ids})
    for k, fold in enumerate(old.get("folds", [])):
        for i in fold["val"]:
            if i in absent:
                absent[i]["fold"] = k
    returning = {case: place for case, place in old.get("absent", {}).items() if case in ids}
    kept = {name: [i for i in old[name] if i in ids] for name in ("train", "val", "test")}
    for case, place in sorted(returning.items()):
        kept[place["split"]].append(case)
    new = sorted(ids - {i for part in kept.values() for i in part})
    random.Random(old["seed"]).shuffle(new)
    fractions = tuple(old["fractions"])
    for case in new:
        counts = {name: len(part) for name, part in kept.items()}
        want = _targets(sum(counts.values()) + 1, fractions)
        # the split furthest below its share; ties to train, then val
        name = max(("train", "val", "test"), key=lambda k: want[k] - counts[k])
        kept[name].append(case)
    pool = kept["train"] + kept["val"]
    k = _fold_count(pool, folds)
    fold_vals = [[i for i in f["val"] if i in ids] for f in old.get("folds", [])]
    parts = {name: sorted(part) for name, part in kept.items()}
    head = {"seed": old["seed"], "fractions": list(fractions), "k": folds, **parts}
    tail = {"absent": dict(sorted(absent.items()))} if absent else {}
    if len(fold_vals) != k:  # a new fold count: folds over the pool as make_splits makes them
        order = sorted(pool)
        random.Random(old["seed"]).shuffle(order)
        return {**head, "folds": _folds(order, k), **tail}
    for case, place in sorted(returning.items()):  # back into the fold it validated
        if place.get("fold") is not None and place["fold"] < k and place["split"] != "test":
            fold_vals[place["fold"]].append(case)
    placed = {i for f in fold_vals for i in f}
    for case in [i for i in pool if i not in placed] if fold_vals else []:  # a pool of one: no folds
        min(fold_vals, key=len).append(case)
    return {**head, "folds": [{"train": sorted(set(pool) - set(v)), "val": sorted(v)} for v in fold_vals],
            **tail}


def write_splits(data_dir: str | Path, ids=None, seed: int | None = None,
                 fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), folds: int | None = None,
                 keep: bool = False) -> Path:
    """Write `data_dir/splits.json`. Without `ids`, the labelled ok cases of the manifest. `keep`
    (prep's re-runs): an existing splits.json is extended (`extend_splits`) with its own seed,
    fractions and fold count, whatever `seed` and `folds` say (a note when they differ: `data
    splits` makes new ones); else made anew (seed 200, 5 folds by default)."""
    from seg.data.mmap_store import prepared_ids
    from seg.data.store import write_json

    data_dir = Path(data_dir)
    if ids is None:
        ids = prepared_ids(data_dir, labelled=True)
    path = data_dir / SPLITS
    if keep and path.is_file():
        try:
            old = load_splits(data_dir)
            if not (isinstance(old, dict) and {"seed", "fractions", "train", "val", "test"} <= set(old)):
                raise ValueError(f"{path}: not a segbench splits file")
        except ValueError as err:  # new splits would move cases between test and train
            raise ValueError(f"{err}; restore it, or make new splits with `segbench data splits` (cases "
                             "then move between splits)") from None
        own_k = old.get("k") or max(len(old.get("folds", [])), 2)
        differ = ([f"--split-seed {seed}"] if seed is not None and seed != old["seed"] else []) + (
            [f"--folds {folds}"] if folds is not None and folds != own_k else [])
        if differ:
            print(f"{path}: kept as it is (seed {old['seed']}, {own_k} folds), not {', '.join(differ)}: "
                  "`segbench data splits` makes new splits (and moves cases)", file=sys.stderr)
        return write_json(path, extend_splits(old, ids, own_k))
    return write_json(path, make_splits(ids, 200 if seed is None else seed, fractions,
                                        5 if folds is None else folds))


def load_splits(data_dir: str | Path) -> dict:
    """`data_dir/splits.json`; FileNotFoundError / ValueError naming the file when it cannot be used."""
    path = Path(data_dir) / SPLITS
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: not found; is {data_dir} a `segbench data prep` output? "
            "(`segbench data splits` writes one)"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def copy_splits(src: str | Path, dst: str | Path, ids=None) -> None:
    """`src`'s splits.json into the folder `dst` (a converted or packed copy trains and validates on
    the same cases), each id list cut to `ids` when given (a packed split); none in `src`, none in `dst`.
    Run on every conversion, skipped ones too: `data splits` may have re-made them since."""
    from seg.data.store import write_json

    path, target = Path(src) / SPLITS, Path(dst) / SPLITS
    if not path.is_file():
        target.unlink(missing_ok=True)
        return
    splits = json.loads(path.read_text())
    if ids is not None:
        keep = set(ids)

        def cut(value):
            if isinstance(value, dict):
                return {k: cut(v) for k, v in value.items()}
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return [v for v in value if v in keep]
            return [cut(v) for v in value] if isinstance(value, list) else value

        splits = cut(splits)
    write_json(target, splits)
