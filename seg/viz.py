"""Viewers and plots: the seed's 4-pane slice viewer, training curves, prediction overlays.

Volumes are shown as axial slices of RAS-oriented arrays (raw NIfTI cases are brought to the
closest canonical RAS orientation; prepared `.pt` cases already are RAS), in the neurological
convention: patient left on the left, anterior at the top.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODALITY_NAMES = ("T1", "T1ce", "T2", "FLAIR")
# One colour per tumour label; 3 (prepared / 2023) and 4 (2021) are both enhancing tumour.
LABEL_COLOURS = {
    1: ("necrotic core (1)", (0.90, 0.10, 0.10)),
    2: ("edema (2)", (0.10, 0.80, 0.20)),
    3: ("enhancing (3)", (1.00, 0.85, 0.00)),
    4: ("enhancing (4)", (1.00, 0.85, 0.00)),
}
LABEL_VALUES = (0, 1, 2, 3, 4)  # background and every convention's tumour labels (2021: 4, 2023/prepared: 3)
OVERLAY_ALPHA = 0.45
SAVE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


@dataclass
class Volume:
    """What the viewer shows: image [4, X, Y, Z] (RAS), optional label / prediction maps [X, Y, Z];
    `spacing_mm`, a voxel's size, draws non-cubic voxels (a prepared case's resized crop) to scale."""

    id: str
    image: np.ndarray
    label: np.ndarray | None = None
    pred: np.ndarray | None = None
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)


def _figure(headless: bool, figsize: tuple[float, float]):
    """A headless `Figure` (no pyplot, no global backend switch: safe inside notebooks) or a pyplot one."""
    if headless:
        from matplotlib.figure import Figure

        return Figure(figsize=figsize)
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize)


def _canonical(path: Path):
    import nibabel as nib

    return nib.as_closest_canonical(nib.load(str(path)))


def load_volume(case: str | Path, pred: str | Path | None = None) -> Volume:
    """A raw case folder (BraTS 2021 or 2023 names) or a prepared `.pt`, plus an optional predicted
    label map (NIfTI on the case's grid, or a prepared-space `.pt` label / `[S,S,S]` tensor file)."""
    case = Path(case)
    grid = None  # the case's canonical affine (raw cases): a NIfTI prediction must be on it
    if case.suffix == ".pt":
        from seg.data.store import load_case

        data = load_case(case)
        image = data["image"].float().numpy()
        label = data["label"][0].numpy() if "label" in data else None
        volume = Volume(str(data["meta"].get("id", case.stem)), image, label)
        from seg.data.inverse import prepared_spacing_mm

        try:
            volume.spacing_mm = prepared_spacing_mm(data["meta"])
        except KeyError:  # a .pt without prep's crop box: drawn as cubic voxels
            pass
    elif case.is_dir():
        import nibabel as nib

        from seg.data.cases import discover, read_validated

        found = discover(case)
        if len(found) != 1:
            raise ValueError(
                f"{case}: expected one BraTS case, found {len(found)} ({[c.id for c in found][:5]})"
            )
        c = found[0]
        # unreadable, truncated, missing or off-grid files: named, not a traceback
        errors, loaded = read_validated(c)
        if errors:
            raise ValueError("; ".join(errors))
        images = [nib.as_closest_canonical(loaded[str(p)]) for p in c.images]
        grid = images[0].affine
        image = np.stack([np.asarray(img.dataobj, dtype=np.float32) for img in images])
        label = None
        if c.seg:
            label = np.asarray(nib.as_closest_canonical(loaded[str(c.seg)]).dataobj).astype(np.uint8)
        zooms = tuple(float(s) for s in images[0].header.get_zooms()[:3])
        volume = Volume(c.id, image, label, spacing_mm=zooms)
    else:
        raise FileNotFoundError(f"{case}: not a case folder or a prepared .pt file")
    if pred is not None:
        pred = Path(pred)
        try:
            if pred.suffix == ".pt":
                import torch

                obj = torch.load(pred, weights_only=True)
                values = np.asarray(obj["label"] if isinstance(obj, dict) else obj).squeeze()
            else:
                pred_img = _canonical(pred)
                values = np.asarray(pred_img.dataobj)
        except FileNotFoundError:
            raise
        except Exception as err:  # nibabel / torch raise several types for unreadable files
            raise ValueError(f"{pred}: not a readable label map ({type(err).__name__}: {err})") from err
        # an image or a probability map would be drawn as labels (uint8 wraps 257 to 1): refused
        found = np.unique(values)
        if not np.isin(found, LABEL_VALUES).all():
            shown = ", ".join(f"{v:g}" for v in found[:8]) + (", ..." if found.size > 8 else "")
            raise ValueError(f"{pred}: not a label map (values {shown}; a label map holds "
                             f"{', '.join(map(str, LABEL_VALUES))})")
        volume.pred = values.astype(np.uint8)
        if volume.pred.shape != volume.image.shape[1:]:
            raise ValueError(
                f"{pred}: prediction shape {volume.pred.shape} differs from the case {volume.image.shape[1:]}"
            )
        # same shape is not the same grid: every BraTS case is 240×240×155, and a label map saved with
        # another affine (an identity one from numpy) would be drawn mirrored or shifted
        if grid is not None and pred.suffix != ".pt" and not np.allclose(pred_img.affine, grid, atol=1e-3):
            theirs, ours = np.round(pred_img.affine, 3).tolist(), np.round(grid, 3).tolist()
            raise ValueError(f"{pred}: not on the case's grid (its affine {theirs}, the case's {ours}, both "
                             "as RAS)")
    return volume


def _mark_orientation(ax) -> None:
    """R/L and A/P at the panel's edges: the neurological convention (patient left on the left) is the
    mirror of the radiological one most clinical viewers use."""
    style = dict(transform=ax.transAxes, color="white", fontsize=8, ha="center", va="center")
    for x, y, text in ((0.03, 0.5, "L"), (0.97, 0.5, "R"), (0.5, 0.97, "A"), (0.5, 0.03, "P")):
        ax.text(x, y, text, **style)


def _display_range(channel: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile of the nonzero (brain) voxels: robust to bright outliers."""
    brain = channel[channel != 0]
    if brain.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(brain, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _overlay_rgba(labels_2d: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*labels_2d.shape, 4), dtype=np.float32)
    for value, (_, colour) in LABEL_COLOURS.items():
        mask = labels_2d == value
        rgba[mask, :3] = colour
        rgba[mask, 3] = OVERLAY_ALPHA
    return rgba


def _axial(volume_3d: np.ndarray, z: int) -> np.ndarray:
    # RAS array [x, y, z]: transpose so rows are y (posterior→anterior, flipped by origin="lower").
    return volume_3d[:, :, z].T


def default_slice(volume: Volume) -> int:
    """The axial slice with the most tumour (reference, else prediction), else the middle one."""
    for labels in (volume.label, volume.pred):
        if labels is not None and labels.any():
            return int(np.argmax((labels > 0).sum(axis=(0, 1))))
    return volume.image.shape[-1] // 2


class SliceViewer:
    """The 4-pane viewer: T1, T1ce, T2, FLAIR with the label overlay; a second row for a prediction.

    The mouse wheel (or the up/down arrow keys) moves through axial slices.
    """

    def __init__(self, volume: Volume, slice_index: int | None = None, headless: bool = False):
        self.volume = volume
        self.depth = volume.image.shape[-1]
        if slice_index is not None and not 0 <= slice_index < self.depth:
            raise ValueError(f"--slice {slice_index}: {volume.id} has axial slices 0..{self.depth - 1}")
        self.z = default_slice(volume) if slice_index is None else slice_index
        rows = [("reference", volume.label)] if volume.label is not None or volume.pred is None else []
        if volume.pred is not None:
            rows.append(("prediction", volume.pred))
        self.rows = rows
        self.headless = headless
        self.fig = _figure(headless, (12, 3.3 * len(rows) + 0.9))
        axes = self.fig.subplots(len(rows), 4, squeeze=False)
        self.images, self.overlays = [], []
        ranges = [_display_range(c) for c in volume.image]
        aspect = volume.spacing_mm[1] / volume.spacing_mm[0]  # rows are y, columns x (see _axial)
        for r, (row_name, labels) in enumerate(rows):
            for m, ax in enumerate(axes[r]):
                lo, hi = ranges[m]
                self.images.append(
                    ax.imshow(_axial(volume.image[m], self.z), cmap="gray", vmin=lo, vmax=hi, origin="lower",
                              aspect=aspect)
                )
                overlay = _overlay_rgba(_axial(labels, self.z)) if labels is not None else None
                self.overlays.append(ax.imshow(overlay, origin="lower", aspect=aspect)
                                     if overlay is not None else None)
                ax.set_title(MODALITY_NAMES[m] + (f" + {row_name}" if labels is not None else ""))
                ax.axis("off")
                _mark_orientation(ax)
        from matplotlib.patches import Patch

        legend_values = sorted(
            {
                int(v)
                for _, labels in rows
                if labels is not None
                for v in np.unique(labels)
                if v in LABEL_COLOURS
            }
        )
        names = {v: name for v, (name, _) in LABEL_COLOURS.items()}
        if {3, 4} <= set(legend_values):  # two conventions on one figure (2023 reference, 2021 prediction)
            legend_values.remove(4)
            names[3] = "enhancing (3/4)"
        if legend_values:
            handles = [Patch(color=LABEL_COLOURS[v][1], label=names[v]) for v in legend_values]
            self.fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
        self.fig.canvas.mpl_connect("scroll_event", self.on_scroll)
        self.fig.canvas.mpl_connect("key_press_event", self.on_key)
        self._update_title()

    def _update_title(self) -> None:
        # the index --slice takes (0-based), of 0..depth-1
        hint = "" if self.headless else "   (scroll to move)"  # not on a saved picture
        self.fig.suptitle(f"{self.volume.id}   axial slice {self.z} of 0–{self.depth - 1}{hint}")

    def show_slice(self, z: int) -> None:
        self.z = int(np.clip(z, 0, self.depth - 1))
        for r, (_, labels) in enumerate(self.rows):
            for m in range(4):
                self.images[4 * r + m].set_data(_axial(self.volume.image[m], self.z))
                if labels is not None:
                    self.overlays[4 * r + m].set_data(_overlay_rgba(_axial(labels, self.z)))
        self._update_title()
        self.fig.canvas.draw_idle()

    def on_scroll(self, event) -> None:
        self.show_slice(self.z + (1 if event.button == "up" else -1))

    def on_key(self, event) -> None:
        if event.key in ("up", "down"):
            self.show_slice(self.z + (1 if event.key == "up" else -1))

    def save(self, out_png: str | Path) -> Path:
        return _save_figure(self.fig, out_png)


def _save_figure(fig, out_path: str | Path) -> Path:
    """Write `fig` in the format its suffix names (png, pdf, svg, jpg), atomically."""
    from seg.data.store import atomic_write

    fmt = Path(out_path).suffix.lower().lstrip(".") or "png"
    if fmt not in SAVE_FORMATS:
        raise ValueError(f"{out_path}: cannot write a .{fmt} figure (use {', '.join(SAVE_FORMATS)})")
    return atomic_write(out_path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=100))


def plot_curves(log_csv: str | Path, out_png: str | Path) -> Path:
    """Loss (train, validation) and validation Dice (mean and per region) per epoch from a run's log.csv."""
    with Path(log_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{log_csv}: no epochs logged")
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in rows]
    fig = _figure(True, (11, 4))
    ax_loss, ax_dice = fig.subplots(1, 2)
    panels = (
        (ax_loss, "loss (DiceCE)", [("train", "train_loss"), ("validation", "val_loss")]),
        (
            ax_dice,
            "validation Dice",
            [("mean", "val_dice"), ("ET", "val_dice_et"), ("TC", "val_dice_tc"), ("WT", "val_dice_wt")],
        ),
    )
    for ax, ylabel, series in panels:
        for name, column in series:
            values = [float(r[column]) if r.get(column) not in (None, "") else np.nan for r in rows]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(str(Path(log_csv).parent.name or log_csv))
    fig.tight_layout()
    return _save_figure(fig, out_png)


def plot_overlay(
    image, label, pred, out_png: str | Path, slice_index: int | None = None, modality: int = 3
) -> Path:
    """One axial slice of `modality` (default FLAIR): image, + reference, + prediction, side by side.

    `image` [4, X, Y, Z] (or [X, Y, Z]); `label`, `pred` [X, Y, Z] or [1, X, Y, Z] label maps
    (tensors or arrays, any of the label conventions; `label` may be None).
    """
    image = np.asarray(image, dtype=np.float32)
    channel = image[modality] if image.ndim == 4 else image
    label = None if label is None else np.asarray(label).reshape(channel.shape)
    pred = np.asarray(pred).reshape(channel.shape)
    z = default_slice(Volume("", channel[None], label, pred)) if slice_index is None else slice_index
    lo, hi = _display_range(channel)
    panels = [("image", None), ("reference", label), ("prediction", pred)]
    panels = [(t, lab) for t, lab in panels if t != "reference" or label is not None]
    fig = _figure(True, (4 * len(panels), 4.3))
    axes = fig.subplots(1, len(panels))
    for ax, (title, labels) in zip(axes, panels, strict=True):
        ax.imshow(_axial(channel, z), cmap="gray", vmin=lo, vmax=hi, origin="lower")
        if labels is not None:
            ax.imshow(_overlay_rgba(_axial(labels, z)), origin="lower")
        name = MODALITY_NAMES[modality] if image.ndim == 4 else "image"
        ax.set_title(f"{name} + {title}" if labels is not None else f"{name}, slice {z}")
        ax.axis("off")
        _mark_orientation(ax)
    fig.tight_layout()
    return _save_figure(fig, out_png)
