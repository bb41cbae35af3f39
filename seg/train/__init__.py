"""Training: `TrainConfig` and `train(cfg)`, one loop for a single process and for DDP (torchrun).

Importing this package is cheap (standard library only); torch and MONAI load when `train` runs.
"""

from __future__ import annotations

from seg.train.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def train(cfg: TrainConfig) -> dict:
    """Train per `cfg`; returns a summary: run_dir, best_dice, best_epoch, final_dice, epochs,
    start_epoch, seconds, world_size. Every rank returns the same summary under DDP."""
    from seg.train.loop import run

    return run(cfg)
