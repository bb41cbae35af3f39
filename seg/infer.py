"""Inference: checkpoints → sliding-window probabilities (TTA, ensembles) → label maps on the source grid.

- `sliding_window_predict`: MONAI `sliding_window_inference` (roi, overlap, Gaussian blending,
  sw batch) under autocast; probabilities (softmax, or sigmoids for a "regions" checkpoint:
  seg.targets) averaged over the models of an ensemble and,
  with `tta=True`, over all 8 flip combinations of the three spatial axes (identity, 3 single,
  3 pairs, all three: nnU-Net's mirroring), each flipped back before averaging.
- `predict_case`: a raw case prepared in memory with the checkpoint's own prep configuration,
  predicted, made a label map (argmax, or the nested regions painted), put back on the original
  grid and label convention by
  `seg.data.inverse.write_prediction` (same shape, affine and header as the source; atomic).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from seg import speed
from seg.postprocess import check_min_et_mm3
from seg.recipe import autocast
from seg.targets import probabilities, to_labels

SPATIAL_DIMS = (2, 3, 4)  # of a [B, C, X, Y, Z] batch
# All 8 subsets of the spatial axes; () is the identity.
TTA_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    dims for n in range(len(SPATIAL_DIMS) + 1) for dims in itertools.combinations(SPATIAL_DIMS, n)
)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda if present, else cpu; ValueError for a device this machine does not have."""
    from seg.train.distributed import resolve_device as resolve

    return resolve(device)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict written by `seg.train` (weights_only load); ValueError naming the file."""
    from seg.train.checkpoint import MODEL_KEYS, load_checkpoint

    return load_checkpoint(path, device, required=MODEL_KEYS)


def model_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "cpu", path: str | Path = "checkpoint"
) -> nn.Module:
    """The model `ckpt` describes, its weights loaded, in eval mode; ValueError naming `path` when
    the weights do not fit the model."""
    from seg.models import build
    from seg.train.checkpoint import load_weights

    model = build(ckpt["model_name"], **ckpt["model_options"])
    load_weights(model, ckpt["model"], path)
    return model.to(device).eval()


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of `checkpoint` on `device`, in eval mode."""
    return model_from_checkpoint(read_checkpoint(checkpoint, device), device, checkpoint)


_CHECKPOINT_INFO = ("model_name", "model_options", "config", "prep")


def load_ensemble(
    checkpoints: Sequence[str | Path], device: torch.device, cfg: InferConfig | None = None
) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    """(models in eval mode, each checkpoint's description) for an ensemble on `device`; the
    descriptions keep only the small entries (the weights and optimizer state are let go).
    With `cfg`, its speed options are applied to each model after its weights are loaded.
    On CUDA, cuDNN autotunes from here on (seg.speed.cudnn_autotune: the windows all have one shape)."""
    speed.cudnn_autotune(device)
    models, infos = [], []
    for path in checkpoints:
        ckpt = read_checkpoint(path, device)
        model = model_from_checkpoint(ckpt, device, path)
        if cfg is not None:
            try:
                model = apply_speed(model, cfg)
            except ValueError as err:  # e.g. --fast on a UNet checkpoint
                raise ValueError(f"{path}: {err}") from err
        models.append(model)
        infos.append({k: ckpt[k] for k in _CHECKPOINT_INFO if k in ckpt})
    return models, infos


def apply_speed(model: nn.Module, cfg: InferConfig) -> nn.Module:
    """`model` (weights loaded, eval mode) with `cfg`'s speed options, as `segbench bench` applies
    them (seg.speed); the fast SwinUNETR path is weight compatible, so it goes on after loading."""
    from seg.speed import apply_speed_options, inductor_options

    return apply_speed_options(
        model, fast=cfg.fast, fused_norm=cfg.fused_norm, channels_last=cfg.channels_last,
        compile_mode=cfg.compile_mode, inductor=inductor_options(cfg.inductor),
    ).eval()


def resolve_precision(precision: str, device: torch.device) -> str:
    """`precision`, with "auto" as bf16 on CUDA and fp32 elsewhere."""
    return precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")


@torch.no_grad()
def sliding_window_predict(
    models: nn.Module | Sequence[nn.Module],
    image: torch.Tensor,
    roi: int | Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    tta: bool = False,
    precision: str = "bf16",
    roi_weight_map: torch.Tensor | None = None,
    target: str = "labels",
) -> torch.Tensor:
    """Probabilities [B, C, *spatial] (float32, on `image`'s device) for `image` [B, 4, *spatial]:
    softmax over labels, or one sigmoid per region, as the models' `target` (seg.targets) says.

    The mean over `models` (an ensemble) and, with `tta`, over the 8 flips of `TTA_FLIPS`.
    roi_weight_map: MONAI's window blending weights made in advance (else MONAI makes them from `mode`;
    profiles.footprint passes them, as MONAI's own reads a value back, which fake tensors cannot).
    """
    from monai.inferers import sliding_window_inference

    from seg.swin_fast import cached_biases

    models = [models] if isinstance(models, nn.Module) else list(models)
    roi_size = (roi,) * (image.dim() - 2) if isinstance(roi, int) else tuple(roi)
    flips = TTA_FLIPS if tta else ((),)
    # MONAI cuts contiguous windows: a channels_last_3d input (seg.speed.to_input) keeps its layout
    # only if each window is converted back, else a channels_last model runs on mixed layouts
    channels_last = image.dim() == 5 and not image.is_contiguous() and image.is_contiguous(
        memory_format=torch.channels_last_3d)
    total: torch.Tensor | None = None
    for model in models:
        with cached_biases(model):  # fast SwinUNETR: its window biases built once per model
            for dims in flips:
                x = image.flip(dims) if dims else image
                with autocast(precision, image.device.type):
                    logits = sliding_window_inference(
                        x, roi_size, sw_batch_size, _in_layout(model, channels_last), overlap=overlap,
                        mode=mode, roi_weight_map=roi_weight_map,
                    )
                probs = probabilities(torch.as_tensor(logits), target)
                if dims:
                    probs = probs.flip(dims)
                total = probs if total is None else total.add_(probs)
    return total.div_(len(models) * len(flips))


def _in_layout(model: nn.Module, channels_last: bool):
    if not channels_last:
        return model
    return lambda windows: model(windows.contiguous(memory_format=torch.channels_last_3d))


@dataclasses.dataclass
class InferConfig:
    """Sliding-window settings for `predict_case` / `segbench infer`."""

    roi: int | None = dataclasses.field(
        default=None,
        metadata={"help": "window edge, voxels; default: the training patch, else the prep size"},
    )
    overlap: float = dataclasses.field(default=0.5, metadata={"help": "window overlap fraction"})
    sw_batch_size: int = dataclasses.field(default=4, metadata={"help": "windows per forward pass"})
    mode: str = dataclasses.field(default="gaussian", metadata={"help": "blending: gaussian or constant"})
    tta: bool = dataclasses.field(
        default=False, metadata={"help": "average over the 8 axis-flip combinations"}
    )
    precision: str = dataclasses.field(
        default="auto", metadata={"help": "fp32, bf16, fp16; auto: bf16 on CUDA"}
    )
    min_et_mm3: float = dataclasses.field(
        default=0.0, metadata={"help": "a predicted enhancing tumour smaller than this (mm³) becomes "
                               "necrotic core (seg.postprocess); 0: off"}
    )
    save_probabilities: bool = dataclasses.field(
        default=False, metadata={"help": "also write <id>_probs.pt (the averaged probabilities on the "
                                 "prepared grid, float32) for `segbench ensemble`"}
    )
    # Speed switches (seg.speed): the predictions stay the same up to floating-point rounding.
    compile_mode: str | None = dataclasses.field(
        default=None, metadata={"help": "torch.compile mode for the models (None: eager)"}
    )
    inductor: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "torch._inductor.config options for the compile, NAME=VALUE each"}
    )
    channels_last: bool = dataclasses.field(
        default=False, metadata={"help": "models and input volumes in channels_last_3d"}
    )
    fused_norm: bool = dataclasses.field(
        default=False, metadata={"help": "Triton fused norm kernels (kernels.patch); CUDA + Triton"}
    )
    fast: bool = dataclasses.field(
        default=False, metadata={"help": "SwinUNETR checkpoints through seg.swin_fast (same weights)"}
    )

    def __post_init__(self) -> None:  # one clear error up front, not one per case
        if self.roi is not None and self.roi < 1:
            raise ValueError(f"--roi {self.roi}: a window edge is at least 1 voxel")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"--overlap {self.overlap}: windows overlap by a fraction in [0, 1)")
        if self.sw_batch_size < 1:
            raise ValueError(f"--sw-batch {self.sw_batch_size}: at least 1 window per forward pass")
        check_min_et_mm3(self.min_et_mm3)
        if self.mode not in ("gaussian", "constant"):
            raise ValueError(f"--mode {self.mode}: choose gaussian or constant")


def prep_config_of(ckpt: dict[str, Any]):
    """The `PrepConfig` the checkpoint's training data was prepared with (default when absent)."""
    from seg.data.prep import PrepConfig

    stored = ckpt.get("prep") or {}
    names = {f.name for f in dataclasses.fields(PrepConfig)}
    return PrepConfig(**{k: v for k, v in stored.items() if k in names})


def check_roi(roi: int, model_name: str, model_options: dict, where: str) -> None:
    """ValueError unless the model takes sliding windows of edge `roi` (else every case fails with a
    shape mismatch); `where` names the checkpoint or run in the message."""
    from seg.models import input_multiple

    multiple = input_multiple(model_name, **model_options)
    if any(roi % m for m in multiple):
        raise ValueError(f"--roi {roi}: the {model_name} of {where} takes windows whose edges are multiples "
                         f"of {multiple}")


def check_ensemble(checkpoints: Sequence[str | Path], ckpts: Sequence[dict[str, Any]], roi: int | None,
                   data_dir: str | Path | None = None):
    """(PrepConfig, target, roi) the checkpoints predict with together; ValueError naming the
    checkpoint whose prepared data (grid and intensities; the storage format aside), target or window
    multiple does not fit, or, with `data_dir` (prepared cases to score), a folder prepared otherwise."""
    prep_cfg = prep_config_of(ckpts[0])
    for path, ckpt in zip(checkpoints[1:], ckpts[1:], strict=True):
        # each model sees the one input prepared here: the same grid and intensities
        if dataclasses.replace(prep_config_of(ckpt), format=prep_cfg.format) != prep_cfg:
            raise ValueError(
                f"{path}: prepared with {prep_config_of(ckpt)}, unlike {checkpoints[0]} ({prep_cfg})"
            )
    if data_dir is not None:
        from seg.data.formats import read_prep_config

        folder = prep_config_of({"prep": read_prep_config(data_dir)})
        if dataclasses.replace(folder, format=prep_cfg.format) != prep_cfg:
            raise ValueError(f"{data_dir} was prepared with {folder}, {checkpoints[0]}'s training data with "
                             f"{prep_cfg}: score the models on data prepared as they were trained")
    target = ensemble_target(checkpoints, ckpts)
    roi = roi or default_roi(ckpts[0])
    for path, ckpt in zip(checkpoints, ckpts, strict=True):
        check_roi(roi, ckpt["model_name"], ckpt["model_options"], str(path))
    return prep_cfg, target, roi


def ensemble_target(checkpoints: Sequence[str | Path], ckpts: Sequence[dict[str, Any]]) -> str:
    """The output target (seg.targets) the checkpoints were trained for; ValueError naming a checkpoint
    whose target differs from the first's (softmax labels and region sigmoids do not average)."""
    targets = [(ckpt.get("config") or {}).get("target", "labels") for ckpt in ckpts]
    for path, target in zip(checkpoints, targets, strict=True):
        if target != targets[0]:
            raise ValueError(f"{path}: trained for target {target}, unlike {checkpoints[0]} ({targets[0]})")
    return targets[0]


def default_roi(ckpt: dict[str, Any]) -> int:
    """The window a checkpoint was trained for: its training patch, else the full prepared volume."""
    patch = (ckpt.get("config") or {}).get("patch")
    return int(patch) if patch else int(prep_config_of(ckpt).size)


def prediction_path(folder: str | Path, case_id: str) -> Path:
    """`<folder>/<case_id>_pred.nii.gz`: where infer and ensemble write a case's label map."""
    return Path(folder) / f"{case_id}_pred.nii.gz"


def prepare_input(case, prep_cfg) -> dict:
    """A raw case (`seg.data.cases.Case`) validated and prepared in memory with `prep_cfg` (the
    training data's), so the model sees what it was trained on; its seg file, if any, is not read.
    The host half of a prediction (`predict_case`'s first stage)."""
    from seg.data.cases import read_validated
    from seg.data.prep import prepare_case

    image_case = case.images_only()
    errors, images = read_validated(image_case)
    if errors:
        raise ValueError("; ".join(errors))
    return prepare_case(image_case, prep_cfg, images)


def predict_prepared(models: nn.Module | Sequence[nn.Module], prepared: dict, cfg: InferConfig,
                     device: torch.device, target: str = "labels") -> torch.Tensor:
    """The class probabilities [1,C,S,S,S] of a `prepare_input` case, on the device."""
    from seg.speed import to_input

    image = to_input(prepared["image"][None].to(device), cfg.channels_last)
    return sliding_window_predict(
        models, image, cfg.roi or prepared["meta"]["size"], cfg.overlap, cfg.sw_batch_size, cfg.mode, cfg.tta,
        resolve_precision(cfg.precision, device), target=target,
    )


def write_outputs(probs: torch.Tensor, meta: dict, case_id: str, out_dir: str | Path, cfg: InferConfig,
                  target: str = "labels", info: dict | None = None) -> Path:
    """The label map on the source grid (`<out_dir>/<case_id>_pred.nii.gz`) and, with
    `cfg.save_probabilities`, the probabilities; host work only (`probs` may be on the CPU)."""
    from seg.data.inverse import write_prediction
    from seg.ensemble import probabilities_path, save_probabilities

    label = to_labels(probs, target)[0].to("cpu", torch.uint8)
    if cfg.save_probabilities:
        save_probabilities(probabilities_path(out_dir, case_id), probs[0], meta, target)
    else:  # an earlier run's file would be taken by `segbench ensemble` for this run's
        probabilities_path(out_dir, case_id).unlink(missing_ok=True)
    return write_prediction(prediction_path(out_dir, case_id), label, meta, cfg.min_et_mm3, info)


def predict_case(
    models: nn.Module | Sequence[nn.Module],
    case,
    prep_cfg,
    out_dir: str | Path,
    cfg: InferConfig | None = None,
    device: str | torch.device = "cpu",
    target: str = "labels",
    info: dict | None = None,
) -> Path:
    """Predict one raw case (`seg.data.cases.Case`) and write `<out_dir>/<case_id>_pred.nii.gz`:
    `prepare_input`, `predict_prepared`, `write_outputs`. `info` (when given) gets what
    post-processing changed (`et_to_core_voxels`)."""
    cfg = cfg or InferConfig()
    prepared = prepare_input(case, prep_cfg)
    probs = predict_prepared(models, prepared, cfg, torch.device(device), target)
    return write_outputs(probs, prepared["meta"], case.id, out_dir, cfg, target, info)
