"""Prepared folders as `segbench data prep` writes them, for the pipeline tests: random images in [0, 1],
labels 0..3, a manifest and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seg.data.splits import write_splits
from seg.data.store import save_case, write_json

IDS = [f"Case_{i:03d}" for i in range(5)]
FP16_TOL = 1e-3  # values in [0,1] (+ noise): float16 keeps ~11 bits


def write_prepared(root: Path, size: int = 10, fmt: str = "pt32", ids=IDS) -> Path:
    """A prepared folder like `segbench data prep` writes (random image, labels 0..3)."""
    rng = np.random.default_rng(0)
    for case_id in ids:
        image = torch.from_numpy(rng.random((4, size, size, size), dtype=np.float32))
        label = torch.from_numpy(rng.integers(0, 4, (1, size, size, size)))
        meta = {"id": case_id, "affine": np.eye(4).tolist()}
        save_case(root / f"{case_id}.pt", image, label, meta, fmt=fmt)
    write_json(root / "manifest.json", {"config": {"size": size, "format": fmt},
                                        "cases": [{"id": i, "status": "ok", "file": f"{i}.pt"} for i in ids]})
    write_splits(root, ids=list(ids))
    return root
