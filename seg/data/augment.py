"""The seed project's training augmentations, on the CPU, as MONAI dictionary transforms.

Keys `image` ([4,X,Y,Z] float) and `label` ([1,X,Y,Z] integer); both get the same spatial
transform, only the image gets noise:
- with `patch`: RandSpatialCropd to `patch` (a random position, fixed size) first;
- RandFlipd along each spatial axis independently, p = 0.5 each (axes 0, 1, 2);
- RandRotate90d, p = 0.5, k uniform in {1, 2, 3}, in the plane of spatial axes (0, 1)
  (MONAI's default plane: the axial plane of a RAS/LPS volume);
- RandGaussianNoised on the image, p = 0.2, mean 0, std drawn uniformly from [0, 0.1]
  (MONAI's `sample_std=True`, which the seed ran with).

Reproducibility: `transform.set_random_state(seed)` makes the whole chain deterministic; the
loaders call it once per sample with a seed derived from (run seed, epoch, sample index), so a
sample's augmentation does not depend on the worker, the process count or the resume point.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    if isinstance(patch, int):
        return (patch, patch, patch)
    size = tuple(int(p) for p in patch)
    if len(size) != 3:
        raise ValueError(f"patch must be one size or three sizes, got {patch!r}")
    return size  # type: ignore[return-value]


def seed_train_transforms(patch: int | Sequence[int] | None = None, keys: Sequence[str] = KEYS):
    """The seed's training augmentation as a MONAI `Compose` (see the module docstring).

    `keys` lists the keys present: pass ("image",) for image-only samples.
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
    if size is not None:
        transforms.append(RandSpatialCropd(keys=keys, roi_size=size, random_size=False))
    transforms += [RandFlipd(keys=keys, prob=FLIP_PROB, spatial_axis=axis) for axis in range(3)]
    transforms.append(RandRotate90d(keys=keys, prob=ROTATE_PROB, max_k=3, spatial_axes=ROTATE_AXES))
    transforms.append(RandGaussianNoised(keys=["image"], prob=NOISE_PROB, mean=0.0, std=NOISE_STD))
    return Compose(transforms)
