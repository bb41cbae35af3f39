"""`TrainConfig`: everything one training run needs, with help text per field.

Standard library only: `segbench train` builds its parser from these fields at CLI start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg.speed import COMPILE_MODES, CUDAGRAPH_MODES  # standard library only

LOADERS = ("cpu", "device", "resident")  # see TrainConfig.loader
SPEED_FIELDS = (
    "compile_mode", "inductor", "channels_last", "fused_norm", "fast", "checkpointing", "checkpoint_modules"
)


# Settings a resumed run takes from its config.json unless given again (`segbench train --resume`,
# a `segbench cv` rerun per fold); the others, switches and loader options, are given again (a changed
# one is allowed and noted). The model and its options must fit the checkpoint's weights.
KEPT_ON_RESUME = (
    "model", "model_options", "target", "patch", "epochs", "lr", "weight_decay", "warmup_epochs", "precision"
)


def run_settings(out: str | Path) -> dict:
    """KEPT_ON_RESUME values of the run in `out` (its config.json), or {} for a new run."""
    try:
        config = json.loads((Path(out) / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return {}
    return {name: config[name] for name in KEPT_ON_RESUME if config.get(name) is not None}


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    data_dir: str = field(metadata=_help("prepared folder (`segbench data prep` output, with splits.json)"))
    out: str = field(metadata=_help("run folder: last.pt, best.pt, log.csv, curves.png, config.json"))
    model: str = field(default="unet", metadata=_help("model name: unet, swinunetr or dynunet"))
    model_options: dict = field(
        default_factory=dict, metadata=_help("overrides for seg.models.build, e.g. {'preset': 'paper'}")
    )
    target: str = field(
        default="labels",
        metadata=_help("what the output channels learn (seg.targets): labels = 4 labels, softmax, DiceCE "
                       "(the seed's); regions = the nested WT/TC/ET regions BraTS scores, 3 sigmoids, Dice "
                       "+ BCE (nnU-Net's BraTS setting; MONAI's BraTS tutorials train the regions with "
                       "Dice alone)"),
    )
    epochs: int = field(default=100, metadata=_help("total epochs (a resumed run continues to this count)"))
    batch_size: int = field(default=1, metadata=_help("samples per micro-batch per process"))
    accum: int = field(default=1, metadata=_help("micro-batches accumulated per optimizer step"))
    lr: float = field(default=1e-4, metadata=_help("peak learning rate (AdamW)"))
    weight_decay: float = field(default=1e-5, metadata=_help("AdamW weight decay"))
    warmup_epochs: float = field(
        default=1.0, metadata=_help("linear warm-up length in epochs, then cosine decay to 0")
    )
    precision: str = field(
        default="bf16", metadata=_help("fp32, bf16 (autocast) or fp16 (autocast + GradScaler)")
    )
    workers: int = field(default=0, metadata=_help("DataLoader worker processes per training process"))
    loader: str = field(
        default="cpu",
        metadata=_help("cpu: MONAI augmentation in the loader (the seed's pipeline); device: workers read, "
                       "the seed's augmentation runs batched on the device; resident: the split held in "
                       "device (or pinned) memory, augmented there"),
    )
    seed: int = field(default=0, metadata=_help("seed for weights, sample order and augmentation"))
    patch: int | None = field(
        default=None, metadata=_help("random crop edge for training (validation then uses a sliding "
                                     "window of this size); None trains on full volumes")
    )
    fg_fraction: float = field(
        default=0.0, metadata=_help("share of the training patches centred on a foreground voxel "
                                    "(nnU-Net's oversampling, drawn per sample: 0.5 is nnU-Net's default "
                                    "at batch 2; needs --patch); 0: uniform crops, the seed's")
    )
    fold: int | None = field(
        default=None, metadata=_help("None: the splits' train/val; k: cross-validation fold k")
    )
    device: str = field(default="auto", metadata=_help("auto (cuda if present), cpu, cuda or cuda:N"))
    resume: bool = field(default=False, metadata=_help("continue from out/last.pt when it exists"))
    max_steps_per_epoch: int | None = field(
        default=None, metadata=_help("stop each epoch after this many optimizer steps (quick runs)")
    )
    # Speed switches (seg.speed, the harness's variants): none changes what the model computes.
    compile_mode: str | None = field(
        default=None,
        metadata=_help(f"torch.compile the training model; MODE: {', '.join(COMPILE_MODES)} ('default' when "
                       "the flag has none); None: eager. CUDA-graph modes (reduce-overhead, max-autotune) "
                       "need --accum 1"),
    )
    inductor: tuple[str, ...] = field(
        default=(), metadata=_help("torch._inductor.config options for --compile, NAME=VALUE each (e.g. "
                                   "triton.mix_order_reduction=0); seg.speed.inductor_options")
    )
    channels_last: bool = field(
        default=False, metadata=_help("model weights and input batches in channels_last_3d memory format")
    )
    fused_norm: bool = field(
        default=False, metadata=_help("Triton fused InstanceNorm+activation and LayerNorm (kernels.patch); "
                                      "needs Triton on a CUDA device (interpreted on a CPU under "
                                      "TRITON_INTERPRET=1: tests, slowly)")
    )
    fast: bool = field(
        default=False, metadata=_help("SwinUNETR's weight-compatible fast path (seg.swin_fast); its "
                                      "checkpoints load into stock MONAI SwinUNETR")
    )
    checkpointing: bool | None = field(
        default=None, metadata=_help("SwinUNETR gradient checkpointing (use_checkpoint) on or off; "
                                     "None: the model's preset decides (seed: on, paper: off)")
    )
    checkpoint_modules: tuple[str, ...] = field(
        default=(), metadata=_help("submodules to recompute in backward instead of keeping their "
                                   "activations (seg.recompute), names or fnmatch patterns, e.g. encoder1 "
                                   "for SwinUNETR's full-resolution encoder block, upsamples.* for DynUNet")
    )

    def __post_init__(self) -> None:
        self.checkpoint_modules = tuple(self.checkpoint_modules)  # lists from config.json
        self.inductor = tuple(self.inductor)
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {self.precision!r}: choose fp32, bf16 or fp16")
        for name in ("epochs", "batch_size", "accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.loader not in LOADERS:
            raise ValueError(f"loader {self.loader!r}: choose {', '.join(LOADERS)}")
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction {self.fg_fraction}: a share of the patches, in [0, 1]")
        if self.fg_fraction > 0 and self.patch is None:
            raise ValueError("fg_fraction chooses where patches are cropped: give --patch too")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile_mode!r}: choose {', '.join(COMPILE_MODES)}")
        from seg.targets import check_target  # torch: parsing is done by now

        check_target(self.target)
        if self.target == "regions":  # a 3-channel head; stored in the checkpoint's model options
            self.model_options = {"out_channels": 3, **self.model_options}
            if self.model_options["out_channels"] != 3:
                raise ValueError("target regions trains 3 output channels (WT, TC, ET), not "
                                 f"out_channels={self.model_options['out_channels']}")
        if self.inductor and self.compile_mode is None:
            raise ValueError("--inductor options set how torch.compile compiles: add --compile")
        if self.compile_mode in CUDAGRAPH_MODES and self.accum > 1:
            # CUDA graph trees hand the backward graph's static output buffer to .grad on the
            # first micro-batch and overwrite it on the next: accumulated gradients come out wrong
            # (pytorch/pytorch#96693, #169545).
            raise ValueError(f"compile mode {self.compile_mode} uses CUDA graphs, which do not accumulate "
                             "gradients correctly: use --accum 1 or --compile max-autotune-no-cudagraphs")
        if "fast" in self.model_options:
            raise ValueError("give the SwinUNETR fast path as --fast (TrainConfig.fast), not as model "
                             "option fast: the checkpoint's model options rebuild the stock model for infer")
        if self.fast and self.model != "swinunetr":
            raise ValueError(f"--fast is SwinUNETR's fast path; model {self.model} has none")
        if self.checkpointing is not None:
            if self.model != "swinunetr":
                raise ValueError(f"model {self.model} has no gradient-checkpointing option")
            if "use_checkpoint" in self.model_options:
                raise ValueError("gradient checkpointing given twice: use --checkpointing/--no-checkpointing "
                                 "or model option use_checkpoint, not both")

    def model_build_options(self) -> dict:
        """seg.models.build keyword arguments: model_options plus the checkpointing switch."""
        options = dict(self.model_options)
        if self.checkpointing is not None:
            options["use_checkpoint"] = self.checkpointing
        return options
