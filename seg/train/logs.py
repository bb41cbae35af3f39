"""The run's log.csv: one row per completed epoch (plotted by `seg.viz.plot_curves`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from seg.data.store import atomic_write

COLUMNS = (
    "epoch", "train_loss", "val_loss", "val_dice", "seconds",
    "val_dice_et", "val_dice_tc", "val_dice_wt", "lr", "train_samples_per_s", "val_seconds",
)


def read_log(path: str | Path) -> list[dict]:
    """Rows of an existing log.csv as floats (epoch as int); [] when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if k in COLUMNS}
            for row in csv.DictReader(f)
        ]


def write_log(path: str | Path, rows: list[dict]) -> Path:
    """Rewrite the whole log atomically (it is small), so it always matches the checkpoints."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))
