"""Undo preprocessing steps 2-5 for a label map: `.pt` space (S^3) -> the source NIfTI grid.

Resize back to the crop box (one-hot, trilinear, argmax: smoother than nearest on a label map
that was shrunk), paste into the resampled RAS 1 mm grid, then one nearest-neighbour resample
from that grid to the original shape and affine (undoes spacing and orientation together): plain
indexing when the original voxels sit exactly on the resampled ones (BraTS: axis flips), MONAI's
SpatialResample otherwise (oblique or non-1 mm grids).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_CLASSES = 4  # 0 background, 1 necrotic core, 2 edema, 3 enhancing (2021: 4)


def prepared_spacing_mm(meta: dict) -> tuple[float, float, float]:
    """Physical size (mm) of a prepared voxel: the crop box (in the resampled grid) over the S³ edge."""
    spacing = float(meta.get("config", {}).get("spacing_mm", 1.0))
    extent = np.asarray(meta["crop_end"]) - np.asarray(meta["crop_start"])
    return tuple(float(v) for v in extent * spacing / float(meta["size"]))


def _first_argmax(x):
    """torch.argmax(x, 0) (the first maximum on ties) over a few channels: one comparison per channel
    instead of a strided reduction over them (~3x faster on a BraTS crop)."""
    import torch

    best, index = x[0].clone(), torch.zeros(x.shape[1:], dtype=torch.long)
    for c in range(1, x.shape[0]):
        higher = x[c] > best
        index[higher] = c
        best = torch.where(higher, x[c], best)
    return index


def _voxel_map(src_affine, dst_affine, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray] | None:
    """(R, t) with src voxel = R @ dst voxel + t when R is a signed permutation and t whole numbers
    (a BraTS grid against its RAS 1 mm resampling: axis flips), else None."""
    m = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(dst_affine, dtype=np.float64)
    r, t = np.rint(m[:3, :3]), np.rint(m[:3, 3])
    exact = np.allclose(m[:3, :3], r, atol=tol) and np.allclose(m[:3, 3], t, atol=tol)
    if not exact or not ((np.abs(r).sum(0) == 1).all() and (np.abs(r).sum(1) == 1).all()):
        return None
    return r.astype(np.int64), t.astype(np.int64)


def _gather(src: np.ndarray, r: np.ndarray, t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resampling when every destination voxel sits exactly on a source voxel
    (`_voxel_map`): plain indexing, zero outside the source (SpatialResample's padding)."""
    index, inside, dst_axis = [], [], []
    for a in range(3):
        j = int(np.flatnonzero(r[a])[0])  # the destination axis that source axis a follows
        i = r[a, j] * np.arange(shape[j]) + t[a]
        ok = (i >= 0) & (i < src.shape[a])
        index.append(np.where(ok, i, 0))
        inside.append(ok)
        dst_axis.append(j)
    # (np.ix_ would take a boolean mask for the indices of its True entries)
    inside_all = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    out = np.where(inside_all, src[np.ix_(*index)], 0).astype(src.dtype)
    return np.ascontiguousarray(np.transpose(out, np.argsort(dst_axis)))


def label_to_original(label, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0..3 on the original grid (uint8, the source image's shape) and that grid's
    affine. `label` is [S,S,S] or [1,S,S,S] (tensor or array) in the `.pt` space of `meta`."""
    import torch
    import torch.nn.functional as F

    lab = torch.as_tensor(np.asarray(label) if not torch.is_tensor(label) else label).long().squeeze()
    if lab.ndim != 3:
        raise ValueError(f"label must be [S,S,S] or [1,S,S,S], got shape {tuple(label.shape)}")
    start, end = np.asarray(meta["crop_start"]), np.asarray(meta["crop_end"])
    crop_shape = tuple(int(v) for v in end - start)

    onehot = F.one_hot(lab.clamp(0, N_CLASSES - 1), N_CLASSES).permute(3, 0, 1, 2)[None].float()
    crop = _first_argmax(F.interpolate(onehot, size=crop_shape, mode="trilinear", align_corners=False)[0])
    del onehot

    resampled = np.zeros(meta["resampled_shape"], dtype=np.uint8)
    resampled[tuple(slice(int(s), int(e)) for s, e in zip(start, end, strict=True))] = crop.numpy()
    dst_affine = np.asarray(meta["original_affine"], dtype=np.float64)
    shape = tuple(int(s) for s in meta["original_shape"])
    exact = _voxel_map(meta["resampled_affine"], dst_affine)
    if exact is not None:  # ~4x faster than the general resample, the same voxels
        return _gather(resampled, *exact, shape), dst_affine
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    src = MetaTensor(torch.from_numpy(resampled).float()[None],
                     affine=torch.tensor(meta["resampled_affine"], dtype=torch.float64))
    out = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float64)(
        src, dst_affine=torch.from_numpy(dst_affine), spatial_size=shape
    )
    return np.rint(np.asarray(out.as_tensor()[0])).astype(np.uint8), dst_affine


def to_convention(labels_0123: np.ndarray, convention: str) -> np.ndarray:
    """Labels 0..3 in a case's own convention: 2021 writes enhancing tumour as 4."""
    labels = np.asarray(labels_0123).astype(np.uint8, copy=True)
    if convention == "2021":
        labels[labels == 3] = 4
    elif convention != "2023":
        raise ValueError(f"unknown label convention {convention!r}; expected '2021' or '2023'")
    return labels


def write_prediction(path: str | Path, label, meta: dict, min_et_mm3: float = 0.0, info: dict | None = None
                     ) -> Path:
    """`label` (`.pt` space, 0..3) as a NIfTI on the case's original grid, in its convention,
    with the source image's header (same shape, affine, qform/sform codes). Atomic.
    `min_et_mm3`: an enhancing tumour smaller than this becomes necrotic core (seg.postprocess); the
    voxels it moved go to `info["et_to_core_voxels"]` when `info` is given."""
    import nibabel as nib

    from seg.data.store import save_nifti
    from seg.postprocess import small_et_to_core

    labels, affine = label_to_original(label, meta)
    labels, moved = small_et_to_core(labels, abs(float(np.linalg.det(affine[:3, :3]))), min_et_mm3)
    if info is not None:
        info["et_to_core_voxels"] = moved
    header = nib.load(meta["source"]["t1"]).header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(to_convention(labels, meta["convention"]), affine, header)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    return save_nifti(path, img)
