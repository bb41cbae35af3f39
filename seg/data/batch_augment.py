"""The seed's training augmentation applied to a whole batch, on the batch's device (CUDA or CPU).

Distribution — and, for the same sample seed, the very draws — of `seg.data.augment` (MONAI on the
CPU, one sample at a time). `draw_batch` replays MONAI's seeding: `Compose.set_random_state(seed)`
gives each transform, in order, a seed drawn from `RandomState(seed)`, and each transform then
draws from its own `RandomState`:
- RandSpatialCropd (only with a patch): corner `randint(0, dim - patch + 1)` per axis (or, with
  foreground oversampling, RandForegroundCropd's draws: seg.data.augment.foreground_corner);
- RandFlipd, axes 0, 1, 2: `rand() < 0.5` each;
- RandRotate90d: `k = randint(3) + 1`, then `rand() < 0.5`; plane = spatial axes (0, 1);
- RandGaussianNoised: `rand() < 0.2`; its inner RandGaussianNoise, seeded alike, draws the same
  `rand()` and then σ = `uniform(0, 0.1)` (MONAI's `sample_std=True`).
So a sample gets the crop, flips and rotation the seed's pipeline would give it; only the noise
values differ: they come from a `torch.Generator` on the batch's device seeded per sample (CUDA
and CPU generators differ, so the noise differs between devices; σ and the choice do not).

`augment_batch` applies the draws per sample: the crop is a view, flips then rot90 by k compose
into one flip set plus an optional transpose of the rotation plane (`SampleAug.spatial`), so each
sample costs one flip copy and one copy (with the cast to float32 / int64) into the output batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seg.data.augment import (
    FLIP_PROB,
    NOISE_PROB,
    NOISE_STD,
    ROTATE_AXES,
    ROTATE_PROB,
    as_patch_size,
    foreground_corner,
    uniform_corner,
)

MAX_SEED = 2**32  # monai.utils.MAX_SEED: Randomizable.set_random_state reduces seeds modulo this
MAX_K = 3


@dataclass(frozen=True)
class SampleAug:
    """One sample's draws. `k`: quarter turns in the plane ROTATE_AXES (0: not rotated);
    `noise_std`: 0.0 when no noise; `crop`: the patch corner and `crop_size` its size (the patch
    clipped to the volume), both None for the whole volume."""

    flips: tuple[bool, bool, bool]
    k: int
    noise_std: float
    noise_seed: int
    crop: tuple[int, int, int] | None = None
    crop_size: tuple[int, int, int] | None = None

    def spatial(self) -> tuple[tuple[int, ...], bool]:
        """(spatial axes to flip, transpose the rotation plane) equal to the flips then rot90 by k.

        torch.rot90(A, 1, (a, b)) == A.flip(b).transpose(a, b); k=2: A.flip(a, b); k=3:
        A.flip(a).transpose(a, b); flips commute, so the whole is x.flip(S').transpose(a, b)."""
        a, b = ROTATE_AXES
        flipped = {axis for axis, f in enumerate(self.flips) if f}
        flipped ^= (set(), {b}, {a, b}, {a})[self.k]
        return tuple(sorted(flipped)), self.k % 2 == 1


def draw_batch(
    sample_seeds: Sequence[int], spatial_shape: Sequence[int], patch: int | Sequence[int] | None = None,
    fg_fraction: float = 0.0, label: torch.Tensor | None = None,
) -> list[SampleAug]:
    """The seed pipeline's draws for each sample seed (see the module docstring). With
    `fg_fraction` > 0 and a patch, the crops are RandForegroundCropd's (seg.data.fg_crop), drawn
    from `label` [B,1,*S] (any device; None: no foreground, uniform corners)."""
    size = as_patch_size(patch)
    outer, rs = np.random.RandomState(0), np.random.RandomState(0)  # reseeded: construction is slow
    n_transforms = 3 + 1 + 1 + (size is not None)
    augs = []
    for i, seed in enumerate(sample_seeds):
        outer.seed(int(np.int64(seed) % MAX_SEED))
        seeds = iter([int(outer.randint(MAX_SEED, dtype="uint32")) for _ in range(n_transforms)])
        crop = crop_size = None
        if size is not None:
            rs.seed(next(seeds))
            if fg_fraction > 0:
                crop = foreground_corner(rs, spatial_shape, size, fg_fraction,
                                         None if label is None else label[i, 0])
            else:
                crop = uniform_corner(rs, spatial_shape, size)
            crop_size = patch_shape(spatial_shape, size)
        flips = []
        for _ in range(3):
            rs.seed(next(seeds))
            flips.append(bool(rs.rand() < FLIP_PROB))
        rs.seed(next(seeds))
        k = int(rs.randint(MAX_K)) + 1
        k = k if rs.rand() < ROTATE_PROB else 0
        rs.seed(next(seeds))
        # The dict transform draws rand() from its RandomState; its inner transform, seeded alike,
        # draws the same rand() and then σ: one stream replays both.
        noisy = rs.rand() < NOISE_PROB
        std, noise_seed = 0.0, 0
        if noisy:
            std = float(rs.uniform(0, NOISE_STD))
            noise_seed = int(rs.randint(2**62, dtype=np.int64))
        augs.append(SampleAug(tuple(flips), k, std, noise_seed, crop, crop_size))  # type: ignore[arg-type]
    return augs


def patch_shape(spatial_shape: Sequence[int], patch: int | Sequence[int] | None) -> tuple[int, int, int]:
    """The output's spatial shape: the patch clipped to the volume, or the volume."""
    size = as_patch_size(patch)
    shape = spatial_shape if size is None else [min(d, p) for d, p in zip(spatial_shape, size, strict=True)]
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def _out_shape(spatial: Sequence[int], augs: Sequence[SampleAug]) -> tuple[int, ...]:
    a, b = ROTATE_AXES
    swapped = {aug.spatial()[1] for aug in augs}
    if True in swapped and spatial[a] != spatial[b]:
        if False in swapped:
            raise ValueError(
                f"samples of spatial shape {tuple(spatial)} rotated by 90° and not rotated cannot share a "
                f"batch; use equal sizes on spatial axes {ROTATE_AXES} (as the seed does) or batch 1"
            )
        spatial = list(spatial)
        spatial[a], spatial[b] = spatial[b], spatial[a]
    return tuple(spatial)


def _apply(x: torch.Tensor, augs: Sequence[SampleAug], size: Sequence[int], dtype: torch.dtype):
    a, b = (2 + axis for axis in ROTATE_AXES)
    out = torch.empty((x.shape[0], x.shape[1], *_out_shape(size, augs)), dtype=dtype, device=x.device)
    for i, aug in enumerate(augs):
        view = x[i]
        if aug.crop is not None:
            view = view[tuple([slice(None)] + [slice(c, c + s) for c, s in zip(aug.crop, size, strict=True)])]
        dims, swap = aug.spatial()
        y = view.flip([1 + d for d in dims]) if dims else view
        out[i].copy_(y.transpose(a - 1, b - 1) if swap else y)  # copy_ casts to the output dtype
    return out


def augment_batch(
    image: torch.Tensor,
    label: torch.Tensor | None,
    augs: Sequence[SampleAug],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply per-sample draws to `image` [B,C,X,Y,Z] (any float dtype) and `label` [B,1,X,Y,Z]
    (any integer dtype, or None), on their device. Returns a new float32 image and int64 label
    (the inputs are not modified). `generator`: a torch.Generator on the image's device, reseeded
    per noisy sample (one is made when None)."""
    if len(augs) != image.shape[0]:
        raise ValueError(f"{len(augs)} draws for a batch of {image.shape[0]}")
    sizes = {aug.crop_size for aug in augs}
    if len(sizes) > 1:
        raise ValueError(f"samples of one batch need one crop size, got {sorted(map(str, sizes))}")
    size = augs[0].crop_size or tuple(image.shape[2:])
    out_image = _apply(image, augs, size, torch.float32)
    out_label = None if label is None else _apply(label, augs, size, torch.int64)
    if any(aug.noise_std > 0 for aug in augs):
        generator = generator or torch.Generator(device=image.device)
        for i, aug in enumerate(augs):
            if aug.noise_std > 0:
                generator.manual_seed(aug.noise_seed)
                noise = torch.randn(out_image.shape[1:], generator=generator, device=image.device)
                out_image[i].add_(noise, alpha=aug.noise_std)
    return out_image, out_label
