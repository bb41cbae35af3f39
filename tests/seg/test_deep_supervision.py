"""DynUNet with deep supervision (nnU-Net's training setup) through the seed recipe's loss."""

from __future__ import annotations

import torch
from test_loaders import write_prepared

from seg import models
from seg.infer import load_model
from seg.recipe import build_loss
from seg.train import TrainConfig, train
from seg.train.checkpoint import load_checkpoint

TINY_DS = dict(filters=[8, 16, 32, 64], strides=[1, 2, 2, 2], deep_supervision=True, deep_supr_num=2)


def test_deeply_supervised_heads_are_weighted_one_half_quarter_normalised():
    torch.manual_seed(0)
    model = models.build("dynunet", **TINY_DS).train()
    image, label = torch.randn(2, 4, 32, 32, 32), torch.randint(0, 4, (2, 1, 32, 32, 32))
    logits = model(image)
    assert logits.shape == (2, 3, 4, 32, 32, 32)  # main head + 2, each upsampled to full size
    loss_fn = build_loss()
    per_head = [loss_fn(logits[:, i], label) for i in range(3)]  # plain logits: DiceCE
    expected = (per_head[0] + 0.5 * per_head[1] + 0.25 * per_head[2]) / 1.75  # on the main head's scale
    torch.testing.assert_close(loss_fn(logits, label), expected)
    loss_fn(logits, label).backward()
    # the extra heads' 1x1 convolutions are trained through the loss
    heads = list(model.deep_supervision_heads.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
    with torch.no_grad():
        assert model.eval()(image).shape == (2, 4, 32, 32, 32)  # eval: the main head only


def test_deep_supervision_trains_and_its_checkpoint_predicts(tmp_path):
    data_dir = write_prepared(tmp_path / "data", n=4, size=16)
    options = dict(TINY_DS, filters=[8, 16, 32], strides=[1, 2, 2], deep_supr_num=1)
    out = tmp_path / "run"
    result = train(TrainConfig(data_dir=str(data_dir), out=str(out), model="dynunet", model_options=options,
                               epochs=1, batch_size=2, precision="fp32", device="cpu", warmup_epochs=0))
    assert result["epochs"] == 1 and 0 <= result["final_dice"] <= 1  # validated on the main head
    last = load_checkpoint(out / "last.pt")
    assert last["model_options"]["deep_supervision"] is True
    model = load_model(out / "last.pt")
    with torch.no_grad():
        logits = model(torch.randn(1, 4, 16, 16, 16))
    assert logits.shape == (1, 4, 16, 16, 16)
    assert torch.isfinite(logits).all()


def test_plain_logits_keep_dicece():
    from monai.losses import DiceCELoss

    logits, label = torch.randn(1, 4, 8, 8, 8), torch.randint(0, 4, (1, 1, 8, 8, 8))
    reference = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)(logits, label)
    torch.testing.assert_close(build_loss()(logits, label), reference)


def test_compiled_deep_supervision_matches_eager(monkeypatch):
    """DynUNet fills its heads list during forward; torch.compile must see the same heads each step."""
    import copy

    from seg.speed import COMPILE_BACKEND_ENV, apply_speed_options

    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")  # dynamo + AOTAutograd, no C++ compile
    torch.manual_seed(0)
    eager = models.build("dynunet", **TINY_DS).train()
    compiled = apply_speed_options(copy.deepcopy(eager), compile_mode="default")
    image, label = torch.randn(2, 4, 32, 32, 32), torch.randint(0, 4, (2, 1, 32, 32, 32))
    loss_fn = build_loss()
    results = []
    for model in (eager, compiled):
        for _ in range(2):  # the second step reuses the heads list the first one filled
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(image), label)
            loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for got, want in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
