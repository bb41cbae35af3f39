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
        # one state per device the saving process saw; a machine with fewer takes the first ones
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def match_optimizer_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (AdamW's moments) its parameter's memory layout.

    `load_state_dict` keeps the saved layout; a run resumed with channels_last switched on or off
    then pairs channels-last moments with contiguous parameters, and the fused AdamW kernels match
    elements by memory position, not by index: silently wrong updates.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def save_checkpoint(path: str | Path, checkpoint: dict) -> Path:
    """Write `checkpoint` to `path` via a temporary file and a rename: a crash leaves the previous
    file intact, never a truncated one."""
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def settle_best(run: Path, last_epoch: int) -> None:
    """Finish or undo an epoch's checkpoint writes cut by a crash (see `seg.train.loop._write_epoch`:
    best.next.pt, then last.pt, then best.next.pt renamed to best.pt). A best.next.pt of last.pt's epoch
    was complete: it becomes best.pt. One of a later epoch belongs to the epoch the resume replays: it
    is dropped, so best.pt never holds weights the log and last.pt do not know of."""
    pending = run / BEST_NEXT
    if not pending.exists():
        return
    try:
        epoch = torch.load(pending, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:  # cut while written (atomic_write makes that unlikely): nothing to keep
        epoch = None
    if epoch == last_epoch:
        pending.replace(run / "best.pt")
    else:
        pending.unlink()


BEST_NEXT = "best.next.pt"

# What `seg.infer` needs to rebuild a model; a resumable training checkpoint also has "epoch".
MODEL_KEYS = ("model", "model_name", "model_options")


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    required: tuple[str, ...] = (*MODEL_KEYS, "epoch"),
) -> dict:
    """The checkpoint dict at `path` (weights_only load); ValueError naming the file when it is
    unreadable or lacks any of `required`."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    missing = [k for k in required if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise ValueError(f"{path}: not a segbench training checkpoint (missing {', '.join(missing)})")
    return checkpoint


def load_weights(model: nn.Module, state_dict: dict, path: str | Path) -> None:
    """`model.load_state_dict(state_dict)`, or one ValueError naming `path` when the weights belong
    to another architecture (torch's own message lists every key, hundreds of lines)."""
    own = model.state_dict()
    missing = sorted(own.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape)
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise ValueError(
            f"{path}: its weights do not fit the model {type(model).__name__} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. {example!r}); "
            "a checkpoint of another model or other model options?"
        )
    model.load_state_dict(state_dict)
