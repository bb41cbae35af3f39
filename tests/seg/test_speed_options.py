"""Speed switches of `segbench train` / `segbench infer` (seg.speed): same results, loadable checkpoints.

torch.compile runs with the aot_eager backend here (SEGBENCH_COMPILE_BACKEND): dynamo and
AOTAutograd as with inductor, without inductor's C++ compile on a 2-core CI machine.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_loaders import write_prepared

from seg import models
from seg.infer import InferConfig, apply_speed, load_model, sliding_window_predict
from seg.speed import COMPILE_BACKEND_ENV, SpeedOptionError, inductor_options
from seg.train import TrainConfig, train
from seg.train.checkpoint import load_checkpoint
from segbench.cli import main

TINY_UNET = {"channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1}
TINY_SWIN = {"preset": "paper", "feature_size": 12}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"), n=4, size=16)


def _config(data_dir: Path, out: Path, **overrides) -> TrainConfig:
    # Two epochs of one optimizer step each: the log's two train losses are the first two steps.
    values = dict(data_dir=str(data_dir), out=str(out), model_options=dict(TINY_UNET), epochs=2,
                  batch_size=2, max_steps_per_epoch=1, lr=1e-2, precision="fp32", device="cpu",
                  warmup_epochs=0)
    values.update(overrides)
    return TrainConfig(**values)


def _log(run: Path) -> list[dict[str, float]]:
    with (run / "log.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _assert_same_run(a: Path, b: Path) -> None:
    """Same train losses, validation results and trained function, within fp32 rounding.

    The function, not each weight: a conv bias followed by InstanceNorm has a zero gradient up to
    rounding noise, and AdamW turns any nonzero noise into a full lr-sized step, so such biases
    differ between any two orderings of the same sums while the model's output does not."""
    rows_a, rows_b = _log(a), _log(b)
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("train_loss", "val_loss", "val_dice"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key
    x = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_a, out_b = (load_model(run / "last.pt")(x) for run in (a, b))
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def eager_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eager") / "run"
    train(_config(data_dir, out))
    return out


def test_channels_last_training_matches_contiguous(data_dir, eager_run, tmp_path):
    out = tmp_path / "cl"
    train(_config(data_dir, out, channels_last=True))
    _assert_same_run(eager_run, out)
    assert load_checkpoint(out / "last.pt")["config"]["channels_last"] is True


@pytest.fixture
def inductor_config():
    """torch._inductor.config, restored after the test (options are set for the process)."""
    import torch._inductor.config as config

    saved = config.save_config()
    yield config
    config.load_config(saved)


def test_compiled_training_matches_eager_and_saves_a_bare_checkpoint(
    data_dir, eager_run, tmp_path, monkeypatch, capsys, inductor_config
):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    out = tmp_path / "compiled"
    inductor_config.triton.mix_order_reduction = True
    train(_config(data_dir, out, compile_mode="default", inductor=["triton.mix_order_reduction=off"]))
    assert inductor_config.triton.mix_order_reduction is True  # the compile's own options: process unchanged
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really compiled the training model
    _assert_same_run(eager_run, out)
    last = load_checkpoint(out / "last.pt")
    assert last["config"]["compile_mode"] == "default"
    assert tuple(last["config"]["inductor"]) == ("triton.mix_order_reduction=off",)
    assert not [k for k in last["model"] if "_orig_mod" in k]
    model = models.build(last["model_name"], **last["model_options"])  # uncompiled
    model.load_state_dict(last["model"])  # strict: every key, no wrapper prefix
    # Resuming with other speed switches is allowed (same function) and said.
    train(_config(data_dir, out, resume=True))
    assert "continuing with: compile_mode 'default' -> None" in capsys.readouterr().out


def test_inductor_options_belong_to_their_compile_not_to_the_next_model_of_the_class(inductor_config):
    """A variant compiled with inductor options, then its interleaved baseline (same class, same
    process) without: the baseline compiles its own graph (it reused the variant's when the options
    were set process-wide) and the process's config is untouched."""
    from seg.speed import compile_model

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.relu(self.lin(x)) * 2

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    fusion = inductor_config.max_fusion_size
    x = torch.randn(4, 8)
    compile_model(Tiny(), "default", {"max_fusion_size": 1})(x)
    compile_model(Tiny(), "default")(x)
    assert counters["stats"]["unique_graphs"] == 2
    assert inductor_config.max_fusion_size == fusion
    torch._dynamo.reset()


def test_fast_swinunetr_trains_and_its_checkpoint_loads_into_stock_monai(tmp_path):
    from monai.networks.nets import SwinUNETR

    from seg.swin_fast import is_fast, to_fast

    # SwinUNETR needs edges divisible by 32, and >1 voxel at its 1/32 bottleneck's InstanceNorm.
    data_dir = write_prepared(tmp_path / "data64", n=4, size=64)
    out = tmp_path / "swin"
    train(_config(data_dir, out, model="swinunetr", model_options=dict(TINY_SWIN), epochs=1, batch_size=1,
                  fast=True, checkpointing=False))
    last = load_checkpoint(out / "last.pt")
    assert last["model_options"] == TINY_SWIN  # inference rebuilds the stock model
    assert last["config"]["fast"] is True and last["config"]["checkpointing"] is False
    stock = SwinUNETR(in_channels=4, out_channels=4, feature_size=12, spatial_dims=3)
    stock.load_state_dict(last["model"])  # strict
    assert not is_fast(stock)
    torch.manual_seed(0)
    initial = SwinUNETR(in_channels=4, out_channels=4, feature_size=12, spatial_dims=3).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in last["model"].items())  # it trained
    # The fast path computes the stock function with the trained weights.
    fast = SwinUNETR(in_channels=4, out_channels=4, feature_size=12, spatial_dims=3)
    fast = to_fast(fast, fused_norm=False)
    fast.load_state_dict(last["model"])
    x = torch.randn(1, 4, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), stock.eval()(x), rtol=1e-4, atol=1e-4)


def test_fused_norm_without_triton_is_a_clear_error(data_dir, tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine can run the kernels")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "fused"
    with pytest.raises(SpeedOptionError, match="--fused-norm: the Triton kernels cannot run here: .*CUDA"):
        train(_config(data_dir, out, fused_norm=True))
    assert not out.exists()  # refused before the run folder is made
    with pytest.raises(SystemExit, match="segbench train: --fused-norm: .*TRITON_INTERPRET"):
        main(["train", "--data", str(data_dir), "--out", str(out), "--device", "cpu", "--fused-norm"])


def test_fused_norm_unchecked_patches_where_triton_cannot_run(monkeypatch):
    """require_kernels=False (profiles.footprint's fake tensors): the same modules fused as
    to_fast(fused_norm=True) would, the same state_dict, though the kernels could not run here."""
    import kernels
    from seg.speed import apply_speed_options

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("this machine can run the kernels")
    stock = models.build("swinunetr", **TINY_SWIN)
    keys = list(stock.state_dict())
    with pytest.raises(SpeedOptionError, match="cannot run here"):
        apply_speed_options(stock, fast=True, fused_norm=True)
    fast = apply_speed_options(stock, fast=True, fused_norm=True, require_kernels=False)
    assert type(fast).__name__ == "FastSwinUNETR"
    fused = kernels.patched_modules(fast)
    assert any("norm" in name for name in fused) and any("conv_block" in name for name in fused)
    batch_norm = models.build("unet", channels=(4, 8), strides=(2,), norm="batch")
    with pytest.raises(SpeedOptionError, match="UNet has no norm \\+ activation the kernels fuse"):
        apply_speed_options(batch_norm, fused_norm=True, require_kernels=False)
    assert list(fast.state_dict()) == keys


def test_inductor_options_are_typed_by_the_option_and_checked():
    items = ["triton.mix_order_reduction=0", "coordinate_descent_tuning = on",
             "max_autotune_gemm_backends=ATEN,TRITON", "triton.mix_order_reduction_initial_xblock=4"]
    assert inductor_options(items) == {
        "triton.mix_order_reduction": False, "coordinate_descent_tuning": True,
        "max_autotune_gemm_backends": "ATEN,TRITON", "triton.mix_order_reduction_initial_xblock": 4}
    with pytest.raises(SpeedOptionError, match="no such option; did you mean triton.mix_order_reduction"):
        inductor_options(["mix_order_reduction=0"])
    with pytest.raises(SpeedOptionError, match="is a bool: give 1/0"):
        inductor_options(["triton.mix_order_reduction=maybe"])
    with pytest.raises(SpeedOptionError, match="is an int, not '2.5'"):
        inductor_options(["triton.mix_order_reduction_initial_xblock=2.5"])
    with pytest.raises(SpeedOptionError, match="write NAME=VALUE"):
        inductor_options(["triton.mix_order_reduction"])


def test_a_bad_inductor_option_stops_training_before_the_run_folder(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    with pytest.raises(SystemExit, match="segbench train: inductor option 'nope'"):
        main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--compile",
              "--inductor", "nope=1", "--device", "cpu"])
    assert not (tmp_path / "run").exists()


def test_config_rejects_options_that_cannot_apply(data_dir, tmp_path):
    with pytest.raises(ValueError, match="add --compile"):
        _config(data_dir, tmp_path, inductor=["triton.mix_order_reduction=0"])
    with pytest.raises(ValueError, match="--fast is SwinUNETR's fast path; model unet has none"):
        _config(data_dir, tmp_path, fast=True)
    with pytest.raises(ValueError, match="as --fast"):
        _config(data_dir, tmp_path, model="swinunetr", model_options={"fast": True})
    with pytest.raises(ValueError, match="model unet has no gradient-checkpointing option"):
        _config(data_dir, tmp_path, checkpointing=True)
    with pytest.raises(ValueError, match="given twice"):
        _config(data_dir, tmp_path, model="swinunetr", model_options={"use_checkpoint": True},
                checkpointing=False)
    with pytest.raises(ValueError, match="CUDA graphs"):
        _config(data_dir, tmp_path, compile_mode="reduce-overhead", accum=2)
    with pytest.raises(ValueError, match="choose default, reduce-overhead"):
        _config(data_dir, tmp_path, compile_mode="fast")
    cfg = _config(data_dir, tmp_path, model="swinunetr", model_options={"preset": "seed"},
                  checkpointing=False)
    assert cfg.model_build_options() == {"preset": "seed", "use_checkpoint": False}


def test_train_cli_flags_reach_the_config(data_dir, tmp_path, monkeypatch):
    import seg.train as seg_train

    seen = {}
    monkeypatch.setattr(seg_train, "train", lambda cfg: seen.setdefault("cfg", cfg) and {})
    main(["train", "--data", str(data_dir), "--out", str(tmp_path), "--model", "swinunetr", "--compile",
          "--channels-last", "--fast", "--no-checkpointing", "--checkpoint-modules", "encoder1, decoder1",
          "--inductor", "triton.mix_order_reduction=0", "--inductor", "coordinate_descent_tuning=1"])
    cfg = seen["cfg"]
    assert cfg.inductor == ("triton.mix_order_reduction=0", "coordinate_descent_tuning=1")
    assert (cfg.compile_mode, cfg.channels_last, cfg.fast, cfg.checkpointing, cfg.fused_norm) == (
        "default", True, True, False, False)
    assert cfg.checkpoint_modules == ("encoder1", "decoder1")
    seen.clear()
    main(["train", "--data", str(data_dir), "--out", str(tmp_path),
          "--compile", "max-autotune-no-cudagraphs"])
    assert seen["cfg"].compile_mode == "max-autotune-no-cudagraphs" and seen["cfg"].checkpointing is None


def test_infer_speed_options_give_the_same_prediction(eager_run, shared_data, tmp_path, monkeypatch):
    checkpoint = eager_run / "last.pt"
    # Probabilities: the plain model against channels_last, and against compiled (aot_eager).
    plain = load_model(checkpoint)
    image = torch.randn(1, 4, 16, 16, 16)
    expected = sliding_window_predict(plain, image, 16, precision="fp32")
    last_model = apply_speed(load_model(checkpoint), InferConfig(channels_last=True))
    assert last_model.model[0].conv.unit0.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    got = sliding_window_predict(
        last_model, image.to(memory_format=torch.channels_last_3d), 16, precision="fp32"
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()
    compiled = apply_speed(load_model(checkpoint), InferConfig(compile_mode="default"))
    assert compiled._orig_mod.training is False  # an OptimizedModule around the eval-mode model
    torch.testing.assert_close(sliding_window_predict(compiled, image, 16, precision="fp32"), expected,
                               rtol=1e-5, atol=1e-6)
    # The command on a real case: label maps on the source grid, equal with and without --channels-last.
    src = tmp_path / "src"
    shutil.copytree(shared_data / "brats2021" / "BraTS2021_90001", src / "BraTS2021_90001")
    labels = []
    for name, extra in (("plain", []), ("cl", ["--channels-last"])):
        argv = ["infer", "--checkpoint", str(checkpoint), "--src", str(src), "--out", str(tmp_path / name),
                "--device", "cpu", *extra]
        assert main(argv) == 0
        labels.append(np.asanyarray(nib.load(str(tmp_path / name / "BraTS2021_90001_pred.nii.gz")).dataobj))
    assert labels[0].shape == (240, 240, 155)
    assert np.mean(labels[0] == labels[1]) > 0.9999  # argmax ties may flip a voxel at fp32 rounding
    assert main(["infer", "--checkpoint", str(checkpoint), "--src", str(src), "--out", str(tmp_path / "x"),
                 "--device", "cpu", "--fast"]) == 1  # a UNet checkpoint has no fast path: one clear error


def test_swinunetr_input_multiple_follows_its_patch_size():
    """MONAI checks edges against patch_size ** 5: the up-front check must ask the same."""
    assert models.input_multiple("swinunetr") == (32, 32, 32)
    assert models.input_multiple("swinunetr", patch_size=4) == (1024, 1024, 1024)


def test_to_input_gives_the_channels_last_layout():
    from seg import speed

    x = torch.randn(2, 4, 6, 6, 6)
    assert speed.to_input(x, True).is_contiguous(memory_format=torch.channels_last_3d)
    assert speed.to_input(x, False) is x
