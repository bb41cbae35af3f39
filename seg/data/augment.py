"""The seed project's training augmentations, on the CPU, as MONAI dictionary transforms.

Keys `image` ([4,X,Y,Z] float) and `label` ([1,X,Y,Z] integer); both get the same spatial
transform, only the image gets noise:
- with `patch`: RandSpatialCropd to `patch` (a random position, fixed size) first;
- RandFlipd along each spatial axis independently, p = 0.5 each (axes 0, 1, 2);
- RandRotate90d, p = 0.5, k uniform in {1, 2, 3}, in the plane of spatial axes (0, 1)
  (MONAI's default plane: the axial plane of a RAS/LPS volume);
- RandGaussianNoised on the image, p = 0.2, mean 0, std drawn uniformly from [0, 0.1]
  (MONAI's `sample_std=True`, which the seed ran with).

Foreground oversampling (`fg_fraction` > 0, with a patch; off in the seed): the crop becomes
`RandForegroundCropd`, which with probability `fg_fraction` centres the patch on a voxel of a
foreground class drawn first (nnU-Net draws class, then voxel), else draws the corner as
RandSpatialCropd does; small tumours and the enhancing ring then appear in a steady share of the
patches instead of by chance. (nnU-Net also fixes the share per batch; here each sample draws.)

Reproducibility: `transform.set_random_state(seed)` makes the whole chain deterministic; the
loaders call it once per sample with a seed derived from (run seed, epoch, sample index), so a
sample's augmentation does not depend on the worker, the process count or the resume point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KEYS = ("image", "label")
ROTATE_AXES = (0, 1)
FLIP_PROB = 0.5
ROTATE_PROB = 0.5
NOISE_PROB = 0.2
NOISE_STD = 0.1


def as_patch_size(patch: int | Sequence[int] | None) -> tuple[int, int, int] | None:
    """`96` -> (96, 96, 96); a 3-sequence is kept; None stays None (full volume)."""
    if patch is None:
        return None
    size = (patch,) * 3 if isinstance(patch, int) else tuple(int(p) for p in patch)
    # MONAI reads a size < 1 as "the whole axis", the batched crop could not: one meaning, refused
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"patch must be one size or three sizes, each >= 1 (None: the whole volume), "
                         f"got {patch!r}")
    return size  # type: ignore[return-value]


def check_batchable(patch: int | Sequence[int] | None, batch_size: int, spatial_shape: Sequence[int]) -> None:
    """A training batch of more than one sample needs equal sizes on ROTATE_AXES (of the patch clipped
    to the volume `spatial_shape`, as the crop clips it; of the volume without a patch): a 90°
    rotation swaps them for about half the samples, which then cannot share a batch. Refused when the
    loader is built, not at the first batch that mixes them (perhaps many steps into a run)."""
    size = as_patch_size(patch) or tuple(spatial_shape)
    crop = tuple(min(d, p) for d, p in zip(spatial_shape, size, strict=True))
    a, b = ROTATE_AXES
    if batch_size > 1 and crop[a] != crop[b]:
        raise ValueError(f"patch {crop} (volumes {tuple(spatial_shape)}): a batch of {batch_size} needs "
                         f"equal sizes on spatial axes {ROTATE_AXES} (the 90° rotation swaps them per "
                         f"sample); use e.g. {(min(crop[a], crop[b]),) * 2 + (crop[2],)} or batch 1")


def uniform_corner(rs: np.random.RandomState, spatial_shape: Sequence[int], size: Sequence[int]):
    """A patch corner drawn as MONAI's RandSpatialCropd draws it (monai.data.utils.get_random_patch
    over get_valid_patch_size: the patch clipped to the volume, one randint per axis it fits in)."""
    pairs = zip(spatial_shape, size, strict=True)
    return tuple(int(rs.randint(0, d - min(d, p) + 1)) if d > p else 0 for d, p in pairs)


def foreground_corner(rs: np.random.RandomState, spatial_shape: Sequence[int], size: Sequence[int],
                      fg_fraction: float, label) -> tuple[int, ...]:
    """RandForegroundCropd's corner. With probability `fg_fraction` (one `rand()`): a foreground class
    present in `label` (sorted, `randint(classes)`), then its k-th voxel in C order (`randint(count)`),
    and the patch centred on it, kept inside the volume; class first, as nnU-Net samples, so a small
    enhancing tumour gets its share beside the edema. Else `uniform_corner`. `label`: an integer
    [X,Y,Z] tensor or array on any device (counted where it lies: only the class counts and the drawn
    voxel's index come to the host), or None."""
    import torch

    if rs.rand() < fg_fraction and label is not None:
        label = torch.as_tensor(label)
        # bincount, not unique: no sort of the volume (122 -> 29 ms on an int64 128^3 label)
        counts = torch.bincount(label.reshape(-1)).tolist()
        classes = [c for c, n in enumerate(counts) if c > 0 and n > 0]  # sorted
        if classes:
            cls = classes[int(rs.randint(len(classes)))]
            flat = (label == cls).reshape(-1).nonzero().squeeze(1)
            centre = np.unravel_index(int(flat[int(rs.randint(counts[cls]))]), tuple(label.shape))
            return tuple(int(min(max(c - p // 2, 0), max(d - p, 0)))
                         for c, d, p in zip(centre, spatial_shape, size, strict=True))
    return uniform_corner(rs, spatial_shape, size)


def seed_train_transforms(patch: int | Sequence[int] | None = None, keys: Sequence[str] = KEYS,
                          fg_fraction: float = 0.0):
    """The seed's training augmentation as a MONAI `Compose` (see the module docstring).

    `keys` lists the keys present: pass ("image",) for image-only samples. `fg_fraction` > 0 (with
    a patch): crops centred on the foreground that often (RandForegroundCropd).
    """
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandSpatialCropd,
    )

    keys = list(keys)
    transforms = []
    size = as_patch_size(patch)
    if size is not None and fg_fraction > 0:
        from seg.data.fg_crop import RandForegroundCropd

        transforms.append(RandForegroundCropd(keys=keys, roi_size=size, fg_fraction=fg_fraction))
    elif size is not None:
        transforms.append(RandSpatialCropd(keys=keys, roi_size=size, random_size=False))
    transforms += [RandFlipd(keys=keys, prob=FLIP_PROB, spatial_axis=axis) for axis in range(3)]
    transforms.append(RandRotate90d(keys=keys, prob=ROTATE_PROB, max_k=3, spatial_axes=ROTATE_AXES))
    transforms.append(RandGaussianNoised(keys=["image"], prob=NOISE_PROB, mean=0.0, std=NOISE_STD))
    return Compose(transforms)
