"""The run's log.csv (one row per completed epoch) and its loss / Dice plots."""

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


def plot_curves(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """loss.png (train and validation loss) and dice.png (mean and per-region validation Dice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    epochs = [r["epoch"] for r in rows]
    figures = {
        "loss.png": ("loss (DiceCE)", [("train", "train_loss"), ("validation", "val_loss")]),
        "dice.png": (
            "validation Dice",
            [("mean ET/TC/WT", "val_dice")] + [(r, f"val_dice_{r.lower()}") for r in ("ET", "TC", "WT")],
        ),
    }
    written = []
    for name, (ylabel, series) in figures.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, key in series:
            ax.plot(epochs, [r[key] for r in rows], marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save = lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100)  # noqa: E731
        written.append(atomic_write(out_dir / name, save))
        plt.close(fig)
    return written
