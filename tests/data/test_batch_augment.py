"""seg.data.batch_augment: the seed's augmentation batched on the device (run here on CPU tensors)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from seg.data.augment import seed_train_transforms
from seg.data.batch_augment import SampleAug, augment_batch, draw_batch


def _coded(shape, batch: int = 1, wrap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Label = voxel position code (distinct within a sample, so any geometry is visible; modulo
    `wrap` to fit a dtype); image channel 0 = label * 10 (alignment survives noise of std <= 0.1),
    channels 1..3 zero (noise shows)."""
    n = int(np.prod(shape))
    label = torch.arange(n).view(1, 1, *shape) + torch.arange(batch).view(-1, 1, 1, 1, 1)
    label = label % wrap if wrap else label
    image = torch.zeros(batch, 4, *shape)
    image[:, 0] = label[:, 0].float() * 10
    return image, label


def _reference(x: torch.Tensor, aug: SampleAug) -> torch.Tensor:
    """The seed's order on one sample [C,X,Y,Z]: crop, flip axis 0, 1, 2, then rot90 in plane (0, 1)."""
    if aug.crop is not None:
        x = x[(slice(None), *(slice(c, c + s) for c, s in zip(aug.crop, aug.crop_size, strict=True)))]
    for axis, flip in enumerate(aug.flips):
        if flip:
            x = x.flip(1 + axis)
    return torch.rot90(x, aug.k, (1, 2)) if aug.k else x


@pytest.mark.parametrize("patch", [None, (6, 6, 4)])
def test_draws_replay_the_seed_pipeline_exactly(patch):
    # Same sample seed -> the geometry MONAI gives (label equal voxel for voxel), the same noise
    # decision, and a noise whose spread is the σ drawn (MONAI's noise values are its own).
    shape = (10, 10, 7)
    transform = seed_train_transforms(patch)
    image, label = _coded(shape)
    rel_err = []
    for seed in range(160):
        transform.set_random_state(seed=seed)
        ref = transform({"image": image[0].clone(), "label": label[0].clone()})
        (aug,) = draw_batch([seed], shape, patch)
        out_image, out_label = augment_batch(image, label, [aug])
        assert torch.equal(out_label[0], ref["label"].as_tensor()), seed
        monai_noisy = bool(ref["image"][1:].abs().sum() > 0)
        assert monai_noisy == (aug.noise_std > 0), seed
        if monai_noisy:
            rel_err.append(abs(float(ref["image"][1:].std()) - aug.noise_std) / aug.noise_std)
            assert float(out_image[0, 1:].std()) == pytest.approx(aug.noise_std, rel=0.25)
    assert rel_err and max(rel_err) < 0.25  # >= 216 noise voxels per sample: spread within ~5 sd


def test_draw_frequencies_match_the_seed_recipe():
    draws = 6000
    augs = draw_batch(range(draws), (16, 16, 16))
    flips = np.array([a.flips for a in augs], float)
    ks = np.array([a.k for a in augs])
    stds = np.array([a.noise_std for a in augs])
    tol = 4.5 * np.sqrt(0.25 / draws)  # 4.5 binomial standard deviations
    assert np.all(np.abs(flips.mean(0) - 0.5) < tol)
    assert abs((ks > 0).mean() - 0.5) < tol
    for k in (1, 2, 3):  # p 0.5, then k uniform in 1..3
        assert abs((ks == k).mean() - 1 / 6) < 4.5 * np.sqrt(1 / 6 * 5 / 6 / draws)
    assert abs((stds > 0).mean() - 0.2) < 4.5 * np.sqrt(0.16 / draws)
    # σ ~ Uniform(0, 0.1) (MONAI's sample_std=True), independent of the other draws
    assert stats.kstest(stds[stds > 0], stats.uniform(0, 0.1).cdf).pvalue > 1e-3
    assert abs(np.corrcoef(flips[:, 0], stds > 0)[0, 1]) < 0.06


def test_batched_application_equals_the_sequential_transforms():
    shape = (8, 8, 5)
    image, label = _coded(shape, batch=48)
    augs = [SampleAug(a.flips, a.k, 0.0, 0) for a in draw_batch(range(48), shape)]
    out_image, out_label = augment_batch(image, label, augs)
    assert out_image.dtype == torch.float32 and out_label.dtype == torch.int64
    for i, aug in enumerate(augs):
        assert torch.equal(out_label[i], _reference(label[i], aug))
        assert torch.equal(out_image[i], _reference(image[i], aug))


def test_labels_stay_aligned_under_every_transform_crop_and_noise():
    shape = (6, 6, 5)
    combos = [SampleAug(flips, k, std, seed, crop, (4, 4, 3))
              for seed, (flips, k, std, crop) in enumerate(itertools.product(
                  itertools.product([False, True], repeat=3), range(4), (0.0, 0.1), [(0, 0, 0), (2, 1, 2)]))]
    image, label = _coded(shape, batch=len(combos), wrap=256)  # 180 voxels: codes stay distinct
    out_image, out_label = augment_batch(image.half(), label.to(torch.uint8), combos)  # stored dtypes
    assert out_label.shape == (len(combos), 1, 4, 4, 3)
    assert torch.equal(torch.round(out_image[:, 0] / 10).long(), out_label[:, 0])
    for i, aug in enumerate(combos):
        assert torch.equal(out_label[i], _reference(label[i], aug))
        noise = out_image[i, 1:]
        assert (noise.abs().sum() > 0) == (aug.noise_std > 0)


def test_a_sample_does_not_depend_on_its_batch_and_inputs_are_kept():
    shape = (6, 6, 6)
    image, label = _coded(shape, batch=3)
    saved = image.clone()
    augs = draw_batch([11, 12, 13], shape, patch=4)
    noisy = [SampleAug(a.flips, a.k, 0.05, 99 + i, a.crop, a.crop_size) for i, a in enumerate(augs)]
    whole, _ = augment_batch(image, label, noisy)
    alone, _ = augment_batch(image[1:2], label[1:2], noisy[1:2])
    assert torch.equal(whole[1], alone[0])
    again, _ = augment_batch(image, label, noisy)
    assert torch.equal(whole, again)
    assert torch.equal(image, saved)


def test_inconsistent_batches_are_refused():
    image, label = _coded((6, 4, 4), batch=2)
    mixed = [SampleAug((False,) * 3, 1, 0.0, 0), SampleAug((False,) * 3, 0, 0.0, 0)]
    with pytest.raises(ValueError, match="cannot share a batch"):
        augment_batch(image, label, mixed)
    # both rotated by 90°: the batch is consistent, axes 0 and 1 swap
    out, _ = augment_batch(image, label, [mixed[0], mixed[0]])
    assert out.shape == (2, 4, 4, 6, 4)
    with pytest.raises(ValueError, match="one crop size"):
        augment_batch(image, label, [SampleAug((False,) * 3, 0, 0.0, 0, (0, 0, 0), (2, 2, 2)), mixed[1]])
