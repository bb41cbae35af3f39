"""seg.train in one process: run outputs, checkpoint format, accumulation, folds, atomic saves."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from test_loaders import write_prepared

from seg import models
from seg.commands.train import _option
from seg.train import TrainConfig, train
from seg.train.checkpoint import load_checkpoint, save_checkpoint
from seg.train.loop import select_ids

TINY = {"channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"), n=6, size=16)


def _config(data_dir: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data_dir=str(data_dir), out=str(out), model_options=dict(TINY), epochs=2, batch_size=2,
                  lr=1e-2, precision="fp32", device="cpu", warmup_epochs=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_run_writes_checkpoints_log_and_plots(data_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(_config(data_dir, out, epochs=3))
    assert summary["epochs"] == 3 and summary["run_dir"] == str(out)
    for name in ("last.pt", "best.pt", "log.csv", "curves.png", "config.json"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    with (out / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"epoch", "train_loss", "val_loss", "val_dice", "seconds"} <= set(rows[0])
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]  # the optimizer really steps
    dices = [float(r["val_dice"]) for r in rows]
    assert summary["best_dice"] == pytest.approx(max(dices))

    last = load_checkpoint(out / "last.pt")  # weights_only=True inside
    assert {"model", "model_name", "model_options", "config", "optimizer", "scheduler", "scaler", "rng",
            "epoch", "best_dice", "prep"} <= set(last)
    assert last["epoch"] == 3 and last["model_name"] == "unet" and last["prep"]["size"] == 16
    assert last["config"]["precision"] == "fp32" and last["rng"]["sampler"]["epoch"] == 2
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == summary["best_epoch"] and best["best_dice"] == pytest.approx(summary["best_dice"])

    # seg.infer's path: rebuild from name + options, load the bare state_dict.
    model = models.build(last["model_name"], **last["model_options"])
    model.load_state_dict(last["model"])
    torch.manual_seed(0)
    fresh = models.build("unet", **TINY).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in last["model"].items())


def test_existing_run_is_not_overwritten_without_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    train(_config(data_dir, out, epochs=1, max_steps_per_epoch=1))
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(data_dir, out, epochs=1))
    # --resume on a finished run is a no-op that keeps the log.
    summary = train(_config(data_dir, out, epochs=1, resume=True))
    assert summary["start_epoch"] == 1
    assert (out / "log.csv").read_text().count("\n") == 2


def _log(run: Path) -> list[dict]:
    with (run / "log.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.parametrize("big, micro, accum", [(2, 1, 2), (4, 3, 2)])
def test_accumulation_matches_the_larger_batch(data_dir, tmp_path, big, micro, accum):
    # 4 training cases. Batch 3 x accum 2 is one group of micro-batches of 3 and 1 samples, which must
    # step like one batch of 4: equal weights per micro-batch would give the lone sample 3x its share.
    # lr 2e-3: see test_train_ddp for why a large lr amplifies summation-order differences.
    train(_config(data_dir, tmp_path / "big", batch_size=big, accum=1, lr=2e-3))
    train(_config(data_dir, tmp_path / "acc", batch_size=micro, accum=accum, lr=2e-3))
    for a, b in zip(_log(tmp_path / "big"), _log(tmp_path / "acc"), strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_accumulated_gradients_have_the_larger_batch_s_scale(data_dir, tmp_path, monkeypatch):
    """Under plain SGD the update is the gradient itself (AdamW's hardly depends on its scale): batch 3 x
    accum 2 (micro-batches of 3 and 1) must step exactly as one batch of 4, scale included."""
    from seg import recipe

    monkeypatch.setattr(recipe, "build_optimizer",
                        lambda model, lr, weight_decay: torch.optim.SGD(model.parameters(), lr=lr))
    for run, batch, accum in (("big", 4, 1), ("acc", 3, 2), ("still", 4, 1)):
        train(_config(data_dir, tmp_path / run, batch_size=batch, accum=accum, epochs=1, warmup_epochs=0,
                      lr=0.0 if run == "still" else 0.5))
    big, acc, start = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("big", "acc", "still"))
    assert max(float((big[k].float() - start[k].float()).abs().max()) for k in big) > 1e-3  # it stepped
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-4, atol=1e-6)


def test_a_crash_between_checkpoint_writes_never_leaves_best_ahead_of_last(data_dir, tmp_path, monkeypatch):
    import itertools

    from seg.train import loop

    dice = itertools.count(1)  # every epoch improves, so every epoch writes a new best
    real_validate, real_save = loop.validate, loop.ckpt.save_checkpoint
    monkeypatch.setattr(loop, "validate",
                        lambda *a, **k: {**real_validate(*a, **k), "val_dice": next(dice) / 10})
    out = tmp_path / "run"

    def crash_before_last(path, state):  # epoch 2's best is written, its last.pt is not
        if Path(path).name == "last.pt" and state["epoch"] == 2:
            raise RuntimeError("simulated crash")
        return real_save(path, state)

    monkeypatch.setattr(loop.ckpt, "save_checkpoint", crash_before_last)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_config(data_dir, out, epochs=2, max_steps_per_epoch=1))
    assert (out / "best.next.pt").exists() and load_checkpoint(out / "best.pt")["epoch"] == 1
    monkeypatch.setattr(loop.ckpt, "save_checkpoint", real_save)
    train(_config(data_dir, out, epochs=1, max_steps_per_epoch=1, resume=True))  # resumes, trains nothing
    assert not (out / "best.next.pt").exists() and load_checkpoint(out / "best.pt")["epoch"] == 1

    real_replace = Path.replace

    def crash_before_rename(self, target):  # epoch 2's best and last.pt are written, the rename is not
        if self.name == "best.next.pt":
            raise RuntimeError("simulated crash")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", crash_before_rename)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_config(data_dir, out, epochs=2, max_steps_per_epoch=1, resume=True))
    assert load_checkpoint(out / "last.pt")["epoch"] == 2 and load_checkpoint(out / "best.pt")["epoch"] == 1
    monkeypatch.setattr(Path, "replace", real_replace)
    summary = train(_config(data_dir, out, epochs=2, max_steps_per_epoch=1, resume=True))
    assert not (out / "best.next.pt").exists() and load_checkpoint(out / "best.pt")["epoch"] == 2
    assert summary["best_epoch"] == 2


def test_a_resume_names_the_options_it_changes(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train(_config(data_dir, out, epochs=1, max_steps_per_epoch=1, patch=8))
    capsys.readouterr()
    train(_config(data_dir, out, epochs=2, max_steps_per_epoch=1, patch=8, fg_fraction=0.5,
                  channels_last=True, resume=True))
    printed = capsys.readouterr().out
    assert "other speed options; continuing with: channels_last False -> True" in printed
    assert ("other sampling options (other samples from here on); continuing with: fg_fraction 0.0 -> 0.5"
            in printed)
    # a checkpoint older than an option stands for the option's default
    state = load_checkpoint(out / "last.pt")
    del state["config"]["fg_fraction"]
    save_checkpoint(out / "last.pt", state)
    train(_config(data_dir, out, epochs=3, max_steps_per_epoch=1, patch=8, fg_fraction=0.25,
                  channels_last=True, resume=True))
    printed = capsys.readouterr().out
    assert "continuing with: fg_fraction 0.0 -> 0.25" in printed and "speed options" not in printed


def test_patch_training_and_bf16(data_dir, tmp_path, monkeypatch):
    seen = []  # what each training forward got: its input's spatial shape and the autocast dtype

    def record(module, inputs):
        if module.training:
            autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
            seen.append((tuple(inputs[0].shape[2:]), autocast))

    def build(*args, **kwargs):
        model = models_build(*args, **kwargs)
        model.register_forward_pre_hook(record)
        return model

    models_build = models.build
    monkeypatch.setattr(models, "build", build)
    summary = train(_config(data_dir, tmp_path / "patch", epochs=1, patch=8, precision="bf16"))
    assert 0.0 <= summary["final_dice"] <= 1.0
    assert seen and set(seen) == {((8, 8, 8), torch.bfloat16)}
    assert load_checkpoint(tmp_path / "patch" / "last.pt")["config"]["patch"] == 8
    with pytest.raises(ValueError, match="larger than the prepared volumes"):
        train(_config(data_dir, tmp_path / "too_big", patch=32))


def test_folds_and_bad_config(data_dir):
    import json

    splits = json.loads((data_dir / "splits.json").read_text())
    assert select_ids(data_dir, None) == (splits["train"], splits["val"])
    assert select_ids(data_dir, 1) == (splits["folds"][1]["train"], splits["folds"][1]["val"])
    with pytest.raises(ValueError, match="fold 99 does not exist"):
        select_ids(data_dir, 99)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(data_dir="d", out="o", precision="fp8")


def test_cli_user_errors_are_one_line_and_leave_no_run_folder(data_dir, tmp_path, capsys):
    from segbench.cli import main

    base = ["train", "--model", "unet", "--epochs", "1", "--precision", "fp32", "--device", "cpu"]
    cases = [
        (["--data", str(tmp_path), "--out", str(tmp_path / "a")], "splits.json: not found"),
        (["--data", str(data_dir), "--out", str(tmp_path / "b"), "--model-option", "channels=(4, 8, 16)",
          "--model-option", "strides=(2, 2)", "--model-option", "foo=1"],
         "model unet: bad option(s) channels, foo, strides"),
        # the stock UNet halves four times: 16^3 volumes would fail deep inside with a shape mismatch
        (["--data", str(data_dir), "--out", str(tmp_path / "c")], "multiples of (16, 16, 16), at least (32"),
    ]
    for args, words in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(base + args)
        assert str(exit_info.value).startswith("segbench train: ") and words in str(exit_info.value)
        assert "\n" not in str(exit_info.value)
        assert not Path(args[3]).exists(), "a refused run left a folder behind"


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "model_name": "unet", "model_options": {}, "epoch": 1})

    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt  # a kill mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {}, "model_name": "unet", "model_options": {}, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_model_option_parsing():
    assert _option("channels=(8,16,32)") == ("channels", (8, 16, 32))
    assert _option("preset=paper") == ("preset", "paper")
    assert _option("use_v2=True") == ("use_v2", True)
    # a config file's spelling: the string "false" is truthy and DynUNet would turn the switch on
    assert _option("deep_supervision=false") == ("deep_supervision", False)
    assert _option("res_block=TRUE") == ("res_block", True) and _option("x=none") == ("x", None)
    with pytest.raises(ValueError, match="res_block='false' must be True or False"):
        models.build("dynunet", res_block="false")
    with pytest.raises(ValueError, match="fast='yes' must be True or False"):
        models.build("swinunetr", fast="yes")


def test_trains_on_a_packed_mmap_folder(data_dir, tmp_path):
    from seg.data.mmap_store import pack

    pack(data_dir, tmp_path / "packed", progress=False)
    summary = train(_config(tmp_path / "packed", tmp_path / "run", epochs=1, max_steps_per_epoch=1))
    assert 0.0 <= summary["final_dice"] <= 1.0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["prep"]["size"] == 16


@pytest.mark.parametrize("fg_fraction", [0.0, 0.5])  # and with foreground oversampling of the patches
def test_device_loaders_train_alike_and_checkpoint(data_dir, tmp_path, monkeypatch, fg_fraction):
    # The device-augmenting loader (workers read, augmentation batched on the device), the resident
    # one (the split held in memory) and the CPU pipeline draw the same samples, crops, flips and
    # rotations for a seed: every step of every epoch gets the same labels (noise touches only
    # images). Device and resident also give the same curve, up to the resident store's fp16
    # rounding of pt32 images; the CPU pipeline's noise values are its own.
    from seg.train import loop

    labels: dict[str, list[torch.Tensor]] = {}
    forward_backward = loop.recipe.forward_backward

    def recording(model, image, label, *args, **kwargs):
        labels[current].append(label.clone())
        return forward_backward(model, image, label, *args, **kwargs)

    monkeypatch.setattr(loop.recipe, "forward_backward", recording)
    for current in ("device", "resident", "cpu"):
        labels[current] = []
        train(_config(data_dir, tmp_path / current, epochs=2, loader=current, patch=8,
                      fg_fraction=fg_fraction))
    assert len(labels["cpu"]) == 4  # 2 epochs x 2 batches of 2
    for name in ("device", "resident"):
        assert all(torch.equal(a, b) for a, b in zip(labels[name], labels["cpu"], strict=True)), name
    device, resident = _log(tmp_path / "device"), _log(tmp_path / "resident")
    for a, b in zip(device, resident, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-3)
    assert load_checkpoint(tmp_path / "resident" / "last.pt")["epoch"] == 2
    with pytest.raises(ValueError, match="loader"):
        _config(data_dir, tmp_path / "bad", loader="gpu")


def test_a_resume_keeps_the_run_s_precision_and_notes_a_change(data_dir, tmp_path, capsys):
    import json

    from segbench.cli import main

    out = tmp_path / "run"
    common = ["train", "--data", str(data_dir), "--out", str(out), "--device", "cpu", "--batch-size", "2",
              "--max-steps-per-epoch", "1"]  # resumes take the run's model, options and target
    options = ["--model-option", "channels=(8,16,32)", "--model-option", "strides=(2,2)",
               "--target", "regions"]
    assert main([*common, *options, "--epochs", "1", "--precision", "fp16"]) == 0
    scale = load_checkpoint(out / "last.pt")["scaler"]["scale"]
    assert main([*common, "--epochs", "2", "--resume"]) == 0  # no --precision: the run's fp16, not bf16
    assert json.loads((out / "config.json").read_text())["config"]["precision"] == "fp16"
    assert load_checkpoint(out / "last.pt")["scaler"]["scale"] in (scale, scale / 2, scale * 2)
    capsys.readouterr()
    assert main([*common, "--epochs", "3", "--resume", "--precision", "fp32"]) == 0  # scaler state dropped
    assert "continuing with: precision 'fp16' -> 'fp32'" in capsys.readouterr().out
    assert main([*common, "--epochs", "4", "--resume", "--precision", "fp16"]) == 0  # a disabled scaler's {}
    last = load_checkpoint(out / "last.pt")
    assert last["config"]["precision"] == "fp16" and last["config"]["target"] == "regions"
    assert [list(last["model_options"][k]) for k in ("channels", "strides")] == [[8, 16, 32], [2, 2]]


def test_a_resume_on_data_prepared_otherwise_is_refused(data_dir, tmp_path):
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    out = tmp_path / "run"
    train(_config(data, out, epochs=1, max_steps_per_epoch=1))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["config"]["format"] = "compact"  # a storage format trains alike: allowed
    (data / "manifest.json").write_text(json.dumps(manifest))
    train(_config(data, out, epochs=1, max_steps_per_epoch=1, resume=True))
    manifest["config"]["size"] = 32  # another grid: refused
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="trained on data prepared with .*'size': 16.* holds .*'size': 32"):
        train(_config(data, out, epochs=2, max_steps_per_epoch=1, resume=True))


def test_a_short_last_accumulation_group_steps(data_dir, tmp_path):
    """4 micro-batches with --accum 3: groups of 3 and 1; the short one steps too (else its gradients
    leaked into the next epoch) and the cosine schedule spans ceil(4 / 3) = 2 steps per epoch."""
    train(_config(data_dir, tmp_path / "run", batch_size=1, accum=3))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["steps_per_epoch"] == 2 and last["scheduler"]["last_epoch"] == 2 * 2
    assert float(_log(tmp_path / "run")[0]["lr"]) == pytest.approx(0.5e-2, rel=1e-6)  # half-way through


def test_validation_dice_is_the_mean_of_the_region_dices():
    import torch.nn as nn

    from seg.recipe import build_loss
    from seg.train.distributed import Layout
    from seg.train.validate import validate

    torch.manual_seed(0)
    label = torch.randint(0, 4, (1, 1, 8, 8, 8))
    logits = torch.nn.functional.one_hot(label[:, 0], 4).permute(0, 4, 1, 2, 3).float() * 10
    noisy = logits + 8 * torch.randn_like(logits)  # a second case, imperfect
    loader = [{"image": logits, "label": label}, {"image": noisy, "label": label}]
    out = validate(nn.Identity(), loader, build_loss("labels"), "fp32", torch.device("cpu"), Layout())
    regions = [out["val_dice_et"], out["val_dice_tc"], out["val_dice_wt"]]
    assert 0 < min(regions) and max(regions) < 1
    assert out["val_dice"] == pytest.approx(sum(regions) / 3)


def test_an_fp16_resume_restores_the_grad_scaler(data_dir, tmp_path):
    out = tmp_path / "run"
    train(_config(data_dir, out, epochs=1, max_steps_per_epoch=1, precision="fp16"))
    state = load_checkpoint(out / "last.pt")
    state["scaler"]["scale"] = 1024.0  # not a fresh scaler's 65536
    save_checkpoint(out / "last.pt", state)
    train(_config(data_dir, out, epochs=2, max_steps_per_epoch=1, precision="fp16", resume=True))
    assert load_checkpoint(out / "last.pt")["scaler"]["scale"] in (512.0, 1024.0, 2048.0)
