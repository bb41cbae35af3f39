"""Training targets (seg.targets): 4 softmax labels (the seed's) or the 3 nested BraTS regions as
sigmoids (nnU-Net's BraTS setting), from loss to the label map written on the source grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_loaders import write_prepared

from seg.data.cases import discover
from seg.data.prep import PrepConfig
from seg.infer import InferConfig, ensemble_target, load_model, predict_case, sliding_window_predict
from seg.metrics import region_dice
from seg.recipe import build_loss
from seg.targets import probabilities, region_maps, to_labels
from seg.train import TrainConfig, train
from seg.train.checkpoint import load_checkpoint

TINY_UNET = {"channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1}


def _labels(seed: int = 0, shape=(2, 1, 8, 8, 8)) -> torch.Tensor:
    return torch.randint(0, 4, shape, generator=torch.Generator().manual_seed(seed))


def test_region_maps_are_the_nested_brats_regions_and_paint_back_exactly():
    label = torch.tensor([0, 1, 2, 3]).view(1, 1, 4, 1, 1)
    maps = region_maps(label)[0, :, :, 0, 0]
    assert maps.tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]  # WT, TC, ET
    label = _labels()
    assert torch.equal(to_labels(region_maps(label), "regions"), label[:, 0])
    # painted outermost first: a voxel whose ET is on is enhancing whatever WT/TC say (nnU-Net's order)
    probs = torch.tensor([0.2, 0.9, 0.7]).view(1, 3, 1, 1, 1)
    assert to_labels(probs, "regions").item() == 3
    assert to_labels(torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1, 1), "regions").item() == 2
    logits = torch.randn(2, 4, 3, 3, 3)
    assert torch.equal(to_labels(probabilities(logits, "labels"), "labels"), logits.argmax(1))
    assert torch.allclose(probabilities(logits[:, :3], "regions"), torch.sigmoid(logits[:, :3]))


def test_region_loss_is_dice_plus_bce_over_the_three_regions():
    label = _labels(1)
    logits = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    regions = region_maps(label)
    p = torch.sigmoid(logits)
    # MONAI DiceLoss defaults: per sample and channel, smooth 1e-5 above and below, then the mean
    inter = (p * regions).sum((2, 3, 4))
    dice = 1 - (2 * inter + 1e-5) / (p.sum((2, 3, 4)) + regions.sum((2, 3, 4)) + 1e-5)
    expected = dice.mean() + F.binary_cross_entropy_with_logits(logits, regions)
    torch.testing.assert_close(build_loss("regions")(logits, label), expected)
    # a confident right answer costs almost nothing; the labels' loss refuses a 3-channel head
    assert build_loss("regions")((regions * 2 - 1) * 20, label) < 1e-3
    # deep supervision: the same loss per head, weights 1, 1/2 normalised to sum to 1
    heads = torch.stack([logits, logits * 0.5], dim=1)
    loss = build_loss("regions")
    expected = (loss(logits, label) + 0.5 * loss(logits * 0.5, label)) / 1.5
    torch.testing.assert_close(loss(heads, label), expected)
    with pytest.raises(ValueError, match="unknown target 'softmax'"):
        build_loss("softmax")


def test_regions_training_learns_the_regions(tmp_path):
    """A tiny UNet fits one phantom batch: region Dice from the 3-sigmoid head rises well above chance
    (a test that fails if the targets, loss or painting are wrong)."""
    torch.manual_seed(0)
    data = write_prepared(tmp_path / "data", n=2, size=16)
    batch = [torch.load(p, weights_only=True) for p in sorted(data.glob("*.pt"))]
    image = torch.stack([c["image"] for c in batch]).float()
    label = torch.stack([c["label"] for c in batch]).long()
    from seg.models import build

    model = build("unet", out_channels=3, **TINY_UNET)
    loss_fn = build_loss("regions")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss_fn(model(image), label).backward()
        opt.step()
    with torch.no_grad():
        pred = to_labels(probabilities(model(image), "regions"), "regions")
    dice = region_dice(pred, label)
    assert dice.mean() > 0.8, dice


def test_a_regions_run_checkpoints_a_3_channel_head_that_infers_brats_labels(tmp_path, shared_data):
    data = write_prepared(tmp_path / "data", n=4, size=16)
    out = tmp_path / "run"
    cfg = TrainConfig(data_dir=str(data), out=str(out), model_options=dict(TINY_UNET), epochs=1, batch_size=2,
                      max_steps_per_epoch=1, precision="fp32", device="cpu", target="regions")
    assert cfg.model_options["out_channels"] == 3
    train(cfg)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["config"]["target"] == "regions" and ckpt["model_options"]["out_channels"] == 3
    model = load_model(out / "last.pt")
    image = torch.rand(1, 4, 16, 16, 16)
    probs = sliding_window_predict(model, image, 16, tta=True, precision="fp32", target="regions")
    assert probs.shape == (1, 3, 16, 16, 16) and 0 <= probs.min() and probs.max() <= 1
    # the checkpoint's target decides; an ensemble must agree on it
    plain = {"config": {}}
    assert ensemble_target(["a.pt"], [ckpt]) == "regions" and ensemble_target(["b.pt"], [plain]) == "labels"
    with pytest.raises(ValueError, match="b.pt: trained for target labels, unlike a.pt"):
        ensemble_target(["a.pt", "b.pt"], [ckpt, plain])
    # on a real case: labels in the 2021 convention, on the source grid
    case = next(c for c in discover(shared_data / "brats2021") if c.id == "BraTS2021_90001")
    written = predict_case(model, case, PrepConfig(size=16), tmp_path / "pred", InferConfig(roi=16), "cpu",
                           target="regions")
    img = nib.load(str(written))
    assert img.shape == (240, 240, 155)
    assert set(np.unique(np.asanyarray(img.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_a_regions_head_refuses_other_channel_counts(tmp_path):
    with pytest.raises(ValueError, match="3 output channels"):
        TrainConfig(data_dir="d", out="o", target="regions", model_options={"out_channels": 4})
    with pytest.raises(ValueError, match="unknown target"):
        TrainConfig(data_dir="d", out="o", target="sigmoid")
