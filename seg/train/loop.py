"""One training loop for one process or DDP under torchrun: the seed's recipe from `seg.recipe`.

Per epoch: train (micro-batches, gradient accumulation, optimizer step via `seg.recipe`), then
validate, then rank 0 writes best.pt (when the validation Dice improved), last.pt, log.csv and
curves.png (loss and Dice). Checkpoints are written atomically, so a crash loses at most the
running epoch, and `resume=True` replays from the last completed epoch to the same weights as an
uninterrupted run (bitwise on CPU; on CUDA up to cuDNN's nondeterministic kernels).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict
from dataclasses import fields as fields_of
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from profiles.nvtx import nvtx_range
from seg import models, recipe, speed
from seg.data.augment import as_patch_size
from seg.data.fast_loader import build_fast_loader
from seg.data.formats import read_prep_config
from seg.data.loaders import build_loader
from seg.data.store import write_json
from seg.train import checkpoint as ckpt
from seg.train.config import SPEED_FIELDS, TrainConfig
from seg.train.distributed import Layout, all_reduce_sum, barrier, setup, teardown
from seg.train.logs import read_log, write_log
from seg.train.validate import validate
from seg.viz import plot_curves


def run(cfg: TrainConfig) -> dict:
    layout, device = setup(cfg.device)
    try:
        return _run(cfg, layout, device)
    finally:
        teardown()


def select_ids(data_dir: Path, fold: int | None) -> tuple[list[str], list[str]]:
    """(train ids, val ids) from data_dir/splits.json: the main split, or cross-validation fold k."""
    from seg.data import mmap_store
    from seg.data.formats import labelled_ids
    from seg.data.splits import load_splits

    splits = load_splits(data_dir)
    # what to do about a split that does not fit the folder: a packed one is remade from its source
    remedy = ("pack the whole prepared folder (no --split)" if mmap_store.is_packed(data_dir)
              else "prepare more cases, or re-make the splits: `segbench data splits`")
    if fold is None:
        train_ids, val_ids = splits["train"], splits["val"]
    else:
        folds = splits["folds"]
        if not 0 <= fold < len(folds):
            raise ValueError(f"{data_dir}/splits.json has {len(folds)} folds; fold {fold} does not exist")
        train_ids, val_ids = folds[fold]["train"], folds[fold]["val"]
    if not train_ids or not val_ids:
        raise ValueError(
            f"{data_dir}/splits.json: {'training' if not train_ids else 'validation'} split"
            f"{'' if fold is None else f' of fold {fold}'} is empty ({remedy})"
        )
    prepared = set(labelled_ids(data_dir))
    stale = [i for i in (*train_ids, *val_ids) if i not in prepared]
    if stale:  # an interrupted prep re-run (other --size) leaves splits.json as it was
        raise ValueError(
            f"{data_dir}/splits.json names {len(stale)} case(s) the folder does not hold prepared with a "
            f"label: {', '.join(stale[:4])}{' ...' if len(stale) > 4 else ''} (re-run `segbench data prep` "
            f"to the end; {remedy})"
        )
    return list(train_ids), list(val_ids)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Global RNGs (dropout, drop-path) are reseeded per (seed, epoch, rank): every rank's stream
    # is reproducible from the epoch alone, so a resumed DDP run needs no other rank's RNG state.
    return int(np.random.SeedSequence([seed, epoch, rank, 0x5EED]).generate_state(1)[0])


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run(cfg: TrainConfig, layout: Layout, device: torch.device) -> dict:
    start_time = time.perf_counter()
    speed.check_triton_options(device, fused_norm=cfg.fused_norm)  # before the run folder is made
    inductor = speed.inductor_options(cfg.inductor)
    out = Path(cfg.out)
    data_dir = Path(cfg.data_dir)
    train_ids, val_ids = select_ids(data_dir, cfg.fold)
    # which cases train and validate this run: a resume must find the same (splits.json can be re-made)
    split = hashlib.sha256(json.dumps([sorted(train_ids), sorted(val_ids)]).encode()).hexdigest()[:16]
    prep = read_prep_config(data_dir)
    patch = as_patch_size(cfg.patch)
    size = prep.get("size")
    if patch is not None and size is not None and max(patch) > size:
        raise ValueError(f"patch {patch} is larger than the prepared volumes ({size}^3) in {data_dir}")
    edges = patch if patch is not None else (size,) * 3 if size is not None else None
    multiple = models.input_multiple(cfg.model, **cfg.model_build_options())
    # at least two multiples: instance norm in training needs more than one voxel at the bottleneck
    if edges is not None and any(e % m or e < 2 * m for e, m in zip(edges, multiple, strict=True)):
        raise ValueError(
            f"model {cfg.model} needs input edges that are multiples of {multiple}, "
            f"at least {tuple(2 * m for m in multiple)}; "
            + (f"--patch {list(patch)}" if patch is not None else f"{data_dir} is prepared at {size}^3")
            + " (choose a --patch, or `segbench data prep --size`, that is such a multiple)"
        )

    last_path = out / "last.pt"
    state = None
    if last_path.exists():
        if not cfg.resume:
            raise FileExistsError(
                f"{last_path} exists: pass --resume to continue that run, or pick another --out"
            )
        state = ckpt.load_checkpoint(last_path)
        if layout.is_main:
            ckpt.settle_best(out, state["epoch"])
    elif cfg.resume and layout.is_main and out.exists():  # (cv resumes every fold, new ones too)
        tqdm.write(f"{last_path} not found: starting from scratch")
    speed.cudnn_autotune(device)
    _seed_all(cfg.seed)  # identical initial weights on every rank
    model = models.build(cfg.model, **cfg.model_build_options()).to(device)
    # In place (same parameters, same state_dict keys): fast path / fused norms / channels_last.
    # torch.compile comes last, below, once the weights are loaded.
    model = speed.apply_speed_options(
        model, fast=cfg.fast, fused_norm=cfg.fused_norm, channels_last=cfg.channels_last,
        checkpoint_modules=cfg.checkpoint_modules,
    )
    loss_fn = recipe.build_loss(cfg.target)

    if cfg.loader == "cpu":
        train_loader = build_loader(
            data_dir, train_ids, cfg.batch_size, train=True, workers=cfg.workers, seed=cfg.seed,
            patch=patch, distributed=layout.distributed, pin_memory=device.type == "cuda",
            fg_fraction=cfg.fg_fraction,
        )
    else:  # same sample order and augmentation draws as the CPU pipeline, batches arrive on `device`
        train_loader = build_fast_loader(
            data_dir, train_ids, cfg.batch_size, train=True, device=device, seed=cfg.seed, patch=patch,
            workers=cfg.workers, resident=cfg.loader == "resident", distributed=layout.distributed,
            progress=layout.is_main, fg_fraction=cfg.fg_fraction,
        )
    val_loader = build_loader(
        data_dir, val_ids, 1, train=False, workers=min(cfg.workers, 2),
        distributed=layout.distributed, pin_memory=device.type == "cuda",
    )
    micro_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch is not None:
        micro_per_epoch = min(micro_per_epoch, cfg.max_steps_per_epoch * cfg.accum)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.accum)

    optimizer = recipe.build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = recipe.build_scheduler(optimizer, warmup_steps, total_steps=cfg.epochs * steps_per_epoch)
    scaler = recipe.make_scaler(cfg.precision, device.type)

    start_epoch, best_dice, best_epoch, rows = 0, -1.0, 0, []
    if state is not None:
        if state["model_name"] != cfg.model:
            raise ValueError(f"{last_path} trained model {state['model_name']!r}, not {cfg.model!r}")
        stored_fold = (state.get("config") or {}).get("fold")
        if stored_fold != cfg.fold:  # other training and validation cases: best.pt's Dice would mix two
            def named(fold: int | None) -> str:
                return "the main split" if fold is None else f"fold {fold}"

            raise ValueError(f"{last_path} trained on {named(stored_fold)}, not {named(cfg.fold)}: resume "
                             "with the same --fold")
        stored_prep = state.get("prep")
        if stored_prep is not None and _grid(stored_prep) != _grid(prep):  # another size or intensities
            raise ValueError(f"{last_path} trained on data prepared with {_grid(stored_prep)}, {data_dir} "
                             f"holds {_grid(prep)}: resume on the data it trained on, or use another --out")
        stored_split = state.get("split")
        if stored_split is not None and stored_split != split:  # splits.json changed since (data splits)
            raise ValueError(f"{last_path} trained on other cases than {data_dir}/splits.json now gives this "
                             "run (its train/val cases changed since): start a new run (another --out)")
        ckpt.load_weights(model, state["model"], last_path)
        if layout.is_main:  # (after the weights fit: no "continuing with" before a refusal)
            _note_speed_changes(last_path, state.get("config") or {}, cfg)
        optimizer.load_state_dict(state["optimizer"])
        ckpt.match_optimizer_layout(optimizer)  # a resume may switch channels_last
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:  # fp16 before and now (a change of precision is noted)
            scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng(state["rng"])
        start_epoch, best_dice = state["epoch"], state["best_dice"]
        # this run's schedule at this run's step: the checkpoint counted its own steps per epoch (another
        # world size, accum, batch size) and holds its own lr and weight decay
        recipe.rebase_schedule(optimizer, scheduler, cfg.lr, cfg.weight_decay, start_epoch * steps_per_epoch)
        old_steps = state.get("steps_per_epoch")
        # (a finished run that trains nothing more, as a cv rescoring rerun, has no schedule to note)
        if layout.is_main and old_steps not in (None, steps_per_epoch) and start_epoch < cfg.epochs:
            tqdm.write(f"{last_path} made {old_steps} optimizer steps per epoch, this run makes "
                       f"{steps_per_epoch}: the schedule goes on from epoch {start_epoch} of this run's")
        best_epoch = state.get("best_epoch", 0)
        rows = [r for r in read_log(out / "log.csv") if r["epoch"] <= start_epoch]
        del state

    if layout.is_main:  # only now: a run refused above (bad option, missing case, a checkpoint that does
        # not fit) leaves no folder, or its config.json as it was (a resume takes its settings from there)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"config": asdict(cfg), "world_size": layout.world_size})

    # `model` stays the bare module (validation, checkpoints); `train_model` is what steps.
    # torch.compile goes inside DDP, as PyTorch advises ("Where to apply torch.compile?"): dynamo
    # does not trace DDP's hooks well, and with the compiled module inside DDP's forward its
    # DDPOptimizer still splits graphs at the gradient buckets so all-reduces overlap backward.
    # Validation runs the uncompiled module: eval mode and whole volumes would be new graphs.
    train_model: nn.Module = model
    if cfg.compile_mode is not None:
        train_model = speed.compile_model(model, cfg.compile_mode, inductor)
    if layout.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        _seed_all(_epoch_seed(cfg.seed, epoch, layout.rank))
        train_loader.sampler.set_epoch(epoch)
        train_loss, samples = _train_epoch(
            train_model, train_loader, micro_per_epoch, cfg, loss_fn, optimizer, scheduler, scaler,
            device, layout, desc=f"epoch {epoch + 1}/{cfg.epochs}",
        )
        train_seconds = time.perf_counter() - epoch_start
        val_start = time.perf_counter()
        val = validate(model, val_loader, loss_fn, cfg.precision, device, layout, patch, cfg.target)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **val,
            "seconds": time.perf_counter() - epoch_start,
            "lr": optimizer.param_groups[0]["lr"],
            "train_samples_per_s": samples / train_seconds,
            "val_seconds": time.perf_counter() - val_start,
        }
        rows.append(row)
        improved = val["val_dice"] > best_dice
        if improved:
            best_dice, best_epoch = val["val_dice"], epoch + 1
        if layout.is_main:
            _write_epoch(out, cfg, model, optimizer, scheduler, scaler, train_loader, prep, split,
                         epoch + 1, best_dice, best_epoch, improved, rows)
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}: train_loss {train_loss:.4f} val_loss {val['val_loss']:.4f} "
                f"val_dice {val['val_dice']:.4f} (ET {val['val_dice_et']:.3f} TC {val['val_dice_tc']:.3f} "
                f"WT {val['val_dice_wt']:.3f}) {row['seconds']:.1f}s"
            )
        barrier(layout)

    return {
        "run_dir": str(out),
        "best_dice": best_dice,
        "best_epoch": best_epoch,
        "final_dice": rows[-1]["val_dice"] if rows else None,
        "epochs": cfg.epochs,
        "start_epoch": start_epoch,
        "seconds": time.perf_counter() - start_time,
        "world_size": layout.world_size,
    }


def _train_epoch(
    model: nn.Module, loader, micro_batches: int, cfg: TrainConfig, loss_fn, optimizer, scheduler, scaler,
    device: torch.device, layout: Layout, desc: str,
) -> tuple[float, int]:
    """One epoch of `micro_batches` micro-batches; returns (mean loss per sample over all ranks,
    samples all ranks trained on: log.csv's train_samples_per_s is the whole job's rate)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    samples = 0
    batches = iter(loader)
    # Only the epoch's last micro-batch can be short; a group's loss is the mean over its samples,
    # so each micro-batch's loss is weighted by its share of the group's samples.
    per_rank = len(loader.sampler)
    sizes = [min(cfg.batch_size, per_rank - j * cfg.batch_size) for j in range(micro_batches)]
    progress = tqdm(range(micro_batches), desc=desc, leave=False, disable=not layout.is_main)
    for j in progress:
        with nvtx_range("data_wait"):
            batch = next(batches)
        with nvtx_range("h2d"):
            image = speed.to_input(batch["image"].to(device, non_blocking=True), cfg.channels_last)
            label = batch["label"].to(device, non_blocking=True)
        # Each micro-batch is a step of its own for CUDA graphs (their modes require accum 1).
        speed.step_begin(cfg.compile_mode)
        # Micro-batches are grouped by `accum`; a short last group steps on what it has.
        group_start = (j // cfg.accum) * cfg.accum
        group_end = min(group_start + cfg.accum, micro_batches)
        steps_now = j == group_end - 1
        # DDP all-reduces gradients only on the micro-batch that ends a group.
        sync = contextlib.nullcontext() if steps_now or not layout.distributed else model.no_sync()
        group_samples = sum(sizes[group_start:group_end])
        with sync:
            loss = recipe.forward_backward(
                model, image, label, loss_fn, scaler, cfg.precision, loss_scale=group_samples / image.shape[0]
            )
        if steps_now:
            recipe.optimizer_step(optimizer, scaler, scheduler)
        loss_sum += loss.double() * image.shape[0]
        samples += image.shape[0]
        if layout.is_main and j % 10 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    totals = torch.tensor([0.0, float(samples)], dtype=torch.float64, device=device)
    totals[0] = loss_sum
    all_reduce_sum(totals, layout)
    return (totals[0] / totals[1]).item(), round(totals[1].item())


# options that choose which samples (crops) training draws: a resume may change them, but says so
SAMPLING_FIELDS = ("patch", "fg_fraction", "seed")
OPTIMIZER_FIELDS = ("lr", "weight_decay", "warmup_epochs", "epochs")  # a resume takes them (rebase_schedule)


def _grid(prep: dict) -> dict:
    """A prep config less its storage format (pt32, compact and packed copies train alike)."""
    return {k: v for k, v in prep.items() if k != "format"}


def _note_speed_changes(last_path: Path, stored: dict, cfg: TrainConfig) -> None:
    """Say when a resumed run's speed switches differ from the checkpoint's (allowed: none of them
    changes what is computed, e.g. resuming an H100 run without CUDA graphs elsewhere), and when its
    sampling options do (allowed too, but the run then no longer replays one configuration)."""
    defaults = {f.name: f.default for f in fields_of(TrainConfig)}  # a field newer than the checkpoint
    for fields, what in ((SPEED_FIELDS, "speed options"),
                         (SAMPLING_FIELDS, "sampling options (other samples from here on)"),
                         (OPTIMIZER_FIELDS, "optimizer settings (the schedule follows the new ones)"),
                         (("precision",), "numerics (its steps round differently from here on)")):
        before = {name: stored.get(name, defaults[name]) for name in fields}
        changed = [f"{name} {before[name]!r} -> {getattr(cfg, name)!r}"
                   for name in fields if before[name] != getattr(cfg, name)]
        if changed:
            tqdm.write(f"{last_path} was trained with other {what}; continuing with: {', '.join(changed)}")


def _write_epoch(
    out: Path, cfg: TrainConfig, model: nn.Module, optimizer, scheduler, scaler, loader, prep: dict,
    split: str, epoch: int, best_dice: float, best_epoch: int, improved: bool, rows: list[dict],
) -> None:
    with nvtx_range("checkpoint"):
        state = {
            "model": ckpt.bare_module(model).state_dict(),
            "model_name": cfg.model,
            "model_options": dict(cfg.model_options),
            "config": asdict(cfg),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            # the schedule's count is epochs × this run's steps per epoch (rebased on every resume)
            "steps_per_epoch": scheduler.last_epoch // epoch,
            "scaler": scaler.state_dict(),
            "rng": ckpt.capture_rng(loader.sampler.state_dict()),
            "epoch": epoch,
            "best_dice": best_dice,
            "best_epoch": best_epoch,
            "prep": prep,
            "split": split,  # a digest of the train and val case ids
        }
        # last.pt marks the epoch done: a crash before it replays the epoch (the log keeps rows up to
        # last.pt's epoch on resume). The new best goes to best.next.pt first and becomes best.pt only
        # after last.pt, so best.pt never runs ahead of last.pt (ckpt.settle_best on resume).
        if improved:
            ckpt.save_checkpoint(out / ckpt.BEST_NEXT, state)
        write_log(out / "log.csv", rows)
        ckpt.save_checkpoint(out / "last.pt", state)
        if improved:
            (out / ckpt.BEST_NEXT).replace(out / "best.pt")
    plot_curves(out / "log.csv", out / "curves.png")
