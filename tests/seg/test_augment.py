"""seg.data.augment: the seed's CPU augmentations (flips, rot90, Gaussian noise, optional crop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import RandFlipd, RandGaussianNoised, RandRotate90d

from seg.data.augment import as_patch_size, seed_train_transforms


def _sample(shape=(6, 6, 6)) -> dict:
    # Channel 0 encodes the label (x10) so image and label can be checked for the same geometry
    # despite noise (std <= 0.1); channel 1 is zero, so any nonzero value there is noise.
    label = torch.arange(int(np.prod(shape))).reshape(1, *shape) % 4
    image = torch.zeros(4, *shape)
    image[0] = label[0].float() * 10
    return {"image": image, "label": label}


def _run(transform, seed, sample=None):
    transform.set_random_state(seed=seed)
    return transform(dict(sample or _sample()))


def test_image_and_label_move_together_and_label_stays_integer():
    transform = seed_train_transforms()
    for seed in range(20):
        out = _run(transform, seed)
        assert out["label"].dtype == torch.int64
        assert torch.equal(torch.round(out["image"][0] / 10).long(), out["label"][0])


def test_same_seed_same_output_other_seed_differs():
    transform = seed_train_transforms()
    a, b = _run(transform, 7), _run(transform, 7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    outputs = {tuple(_run(transform, s)["label"].flatten().tolist()) for s in range(10)}
    assert len(outputs) > 1


def test_patch_crops_both_keys_to_the_patch_size():
    out = _run(seed_train_transforms(patch=(4, 3, 5)), 0, _sample((8, 8, 8)))
    assert out["image"].shape == (4, 4, 3, 5) and out["label"].shape == (1, 4, 3, 5)
    assert as_patch_size(4) == (4, 4, 4) and as_patch_size(None) is None
    with pytest.raises(ValueError, match="three sizes"):
        as_patch_size((4, 4))
    for bad in (0, -1, (0, 8, 8)):  # MONAI's "whole axis" would differ from the batched crop's
        with pytest.raises(ValueError, match=">= 1"):
            as_patch_size(bad)


def test_probabilities_match_the_seed_recipe():
    transform = seed_train_transforms()
    flips = [t for t in transform.transforms if isinstance(t, RandFlipd)]
    rotate = next(t for t in transform.transforms if isinstance(t, RandRotate90d))
    noise = next(t for t in transform.transforms if isinstance(t, RandGaussianNoised))
    assert [t.flipper.spatial_axis for t in flips] == [0, 1, 2]
    assert rotate.spatial_axes == (0, 1) and rotate.max_k == 3
    assert noise.rand_gaussian_noise.std == 0.1 and noise.rand_gaussian_noise.mean == 0.0
    draws = 600
    flipped = np.zeros(3)
    rotated, noisy, ks = 0, 0, set()
    for seed in range(draws):
        out = _run(transform, seed)
        flipped += [t._do_transform for t in flips]
        rotated += rotate._do_transform
        if rotate._do_transform:
            ks.add(rotate._rand_k)
        noisy += bool(out["image"][1].abs().sum() > 0)
    # Tolerances are > 4 binomial standard deviations at 600 draws.
    assert np.all(np.abs(flipped / draws - 0.5) < 0.09)
    assert abs(rotated / draws - 0.5) < 0.09
    assert ks == {1, 2, 3}
    assert abs(noisy / draws - 0.2) < 0.07


def _blob_sample(shape=(32, 32, 32)) -> dict:
    # a 3-voxel tumour in a corner: a uniform 8³ crop rarely meets it
    label = torch.zeros(1, *shape, dtype=torch.int64)
    label[0, 27:30, 2:5, 28:31] = torch.tensor([1, 2, 3])[None, None, :]
    image = torch.zeros(4, *shape)
    image[0] = label[0].float() * 10
    return {"image": image, "label": label}


def test_foreground_oversampling_centres_that_share_of_the_patches_on_the_tumour():
    import pickle

    sample = _blob_sample()
    hits = {}
    for fraction in (0.0, 0.5, 1.0):
        transform = seed_train_transforms(patch=8, fg_fraction=fraction)
        outs = [_run(transform, seed, sample) for seed in range(200)]
        assert all(o["label"].shape == (1, 8, 8, 8) for o in outs)
        assert all(torch.equal(torch.round(o["image"][0] / 10).long(), o["label"][0]) for o in outs)
        hits[fraction] = sum(bool((o["label"] > 0).any()) for o in outs) / len(outs)
    assert hits[1.0] == 1.0  # every patch holds the tumour, a corner one included (kept inside)
    assert hits[0.0] < 0.1 and 0.4 < hits[0.5] < 0.7
    transform = seed_train_transforms(patch=8, fg_fraction=0.5)  # DataLoader workers may pickle it
    again = pickle.loads(pickle.dumps(transform))
    assert torch.equal(_run(again, 3, sample)["label"], _run(transform, 3, sample)["label"])
    # no foreground, or no label: the uniform crop
    empty = {"image": sample["image"], "label": torch.zeros_like(sample["label"])}
    assert _run(transform, 5, empty)["label"].shape == (1, 8, 8, 8)
    image_only = seed_train_transforms(patch=8, keys=("image",), fg_fraction=1.0)
    assert _run(image_only, 5, {"image": sample["image"]})["image"].shape == (4, 8, 8, 8)


def test_foreground_oversampling_draws_the_class_first():
    # a large edema and one enhancing voxel far from it: drawn voxel-first, the enhancing voxel would
    # be centred once in 1729 draws; class-first (nnU-Net's order), in about a third of them
    label = torch.zeros(1, 32, 32, 32, dtype=torch.int64)
    label[0, 2:14, 2:14, 2:14] = 2
    label[0, 4:6, 4:6, 4:6] = 1
    label[0, 29, 29, 29] = 3
    sample = {"image": torch.zeros(4, 32, 32, 32), "label": label}
    transform = seed_train_transforms(patch=8, fg_fraction=1.0)
    share = sum(bool((_run(transform, seed, sample)["label"] == 3).any()) for seed in range(300)) / 300
    assert 0.25 < share < 0.42


def test_foreground_oversampling_needs_a_patch_and_a_share():
    from seg.train import TrainConfig

    with pytest.raises(ValueError, match="give --patch too"):
        TrainConfig(data_dir="d", out="o", fg_fraction=0.3)
    with pytest.raises(ValueError, match="fg_fraction 1.5: a share of the patches"):
        TrainConfig(data_dir="d", out="o", patch=64, fg_fraction=1.5)


def test_a_foreground_crop_on_an_axis_shorter_than_the_patch_keeps_the_whole_axis():
    from seg.data.augment import foreground_corner
    from seg.data.fg_crop import RandForegroundCropd

    label = torch.zeros(1, 6, 12, 12, dtype=torch.int64)
    label[0, 3:5, 8:10, 8:10] = 2
    image = torch.randn(4, 6, 12, 12)
    crop = RandForegroundCropd(keys=["image", "label"], roi_size=(8, 8, 8), fg_fraction=1.0)
    for seed in range(5):
        crop.set_random_state(seed)
        out = crop({"image": image, "label": label})
        assert out["image"].shape == (4, 6, 8, 8) and out["label"].shape == (1, 6, 8, 8)
        assert (out["label"] == 2).sum() == 8  # the whole tumour is in the patch
    corner = foreground_corner(np.random.RandomState(0), (6, 12, 12), (8, 8, 8), 1.0, label[0])
    assert corner[0] == 0
