"""Training checkpoints: one dict, written atomically, loadable with `weights_only=True`.

Keys: "model" (state_dict of the bare module, unwrapped from DDP / torch.compile), "model_name",
"model_options", "config" (asdict(TrainConfig)), "optimizer", "scheduler", "scaler", "rng"
({python, numpy, torch, cuda?, sampler}), "epoch" (completed epochs), "best_dice", "prep"
(the prepared data's config from manifest.json). `seg.infer` rebuilds the model from
model_name + model_options + model.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from seg.data.store import atomic_write


def bare_module(model: nn.Module) -> nn.Module:
    """The module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def capture_rng(sampler_state: dict | None = None) -> dict:
    """Every global RNG this process draws from, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if sampler_state is not None:
        state["sampler"] = dict(sampler_state)
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """Write `checkpoint` to `path` via a temporary file and a rename: a crash leaves the previous
    file intact, never a truncated one."""
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path}: not a readable segbench checkpoint: {err}") from err
    missing = {"model", "model_name", "model_options", "epoch"} - set(checkpoint)
    if missing:
        raise RuntimeError(f"{path}: checkpoint lacks {', '.join(sorted(missing))}")
    return checkpoint
