"""Train/val/test and k-fold splits of prepared cases, kept in `splits.json` beside the data.

Reproducible: ids are sorted before one seeded shuffle, so the same ids and seed give the same
splits whatever order they were found in. Folds cover train+val (test stays held out).
"""

from __future__ import annotations

import json
import random
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
    n = len(order)
    total = sum(fractions)
    n_val, n_test = (round(n * f / total) for f in fractions[1:])
    if n >= 3:
        n_val = max(1, n_val) if fractions[1] > 0 else n_val
        n_test = max(1, n_test) if fractions[2] > 0 else n_test
    n_train = n - n_val - n_test
    train, val, test = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]

    pool = train + val  # already shuffled; chunk i is fold i's validation set
    k = min(folds, len(pool)) if len(pool) >= 2 else 0
    fold_list = []
    for i in range(k):
        fold_val = pool[i::k]
        fold_list.append({"train": sorted(set(pool) - set(fold_val)), "val": sorted(fold_val)})
    return {"seed": seed, "fractions": list(fractions), "train": sorted(train), "val": sorted(val),
            "test": sorted(test), "folds": fold_list}


def write_splits(data_dir: str | Path, ids=None, seed: int = 200,
                 fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), folds: int = 5) -> Path:
    """Write `data_dir/splits.json`. Without `ids`, the labelled ok cases of the manifest."""
    from seg.data.store import MANIFEST, write_json

    data_dir = Path(data_dir)
    if ids is None:
        manifest = json.loads((data_dir / MANIFEST).read_text())
        ids = [e["id"] for e in manifest["cases"] if e["status"] == "ok" and e.get("has_label", True)]
    return write_json(data_dir / SPLITS, make_splits(ids, seed, fractions, folds))


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
