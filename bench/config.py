"""Suites, workloads and their parameters as small dataclasses; `bench.suite_file` reads them from
TOML, e.g.

    name = "quick"
    description = "..."
    device = "cpu"
    [measure]
    iters = 8
    [[workload]]
    kind = "train_step"
    model = "unet"
    variants = ["fp32", "bf16", "seed"]

Each field's type is what a suite file must give (checked at load), its help text what it means; a
params class's `__post_init__` refuses values out of range. Standard library only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUITES_DIR = Path(__file__).with_name("suites")


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the problem."""


class BenchError(RuntimeError):
    """The suite cannot run at all here (no such device, no data); the message says why."""


def _help(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


def is_number(value: Any) -> bool:
    """A TOML number: an int or a float, not a bool (True is an int to Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(bad: list[str]) -> None:
    if bad:
        raise ValueError(", ".join(bad))


def _sizes(name: str, value: list | None, length: int) -> list[str]:
    """[] when `value` is None or `length` whole numbers >= 1, else the complaint."""
    whole = [v for v in value or () if isinstance(v, int) and not isinstance(v, bool) and v >= 1]
    if value is None or len(value) == len(whole) == length:
        return []
    return [f"{name} = {value!r} ({length} whole numbers, each at least 1)"]


def _at_least(obj: Any, **lows: int) -> list[str]:
    return [f"{name} = {getattr(obj, name)} (at least {low})" for name, low in lows.items()
            if getattr(obj, name) < low]


@dataclass
class Measure:
    warmup: int = _help("untimed steps after the first step, before timing", 3)
    iters: int = _help("timed steps (the n of the median)", 15)
    repeats: int = _help("interleaved baseline/variant block pairs when a speedup is quoted (even: AB BA … "
                         "cancels a linear drift; the interval is over these pairs)", 6)
    block: int = _help("steps per interleaved block", 3)
    parity_steps: int = _help("steps of the loss trajectory compared with the reference (0: none)", 3)
    seed: int = _help("seed of the initial weights and the synthetic batches", 0)
    profile_steps: int = _help(
        "steps traced with torch.profiler after the timing (train_step, infer; 0: none): time by "
        "category and top kernels in the row and RUN/profiles/<workload>__<variant>/", 0
    )

    def __post_init__(self) -> None:
        # a median of no steps, or a speedup from empty blocks, would fail only once the case has run
        least = {"warmup": 0, "iters": 1, "repeats": 1, "block": 1, "parity_steps": 0, "profile_steps": 0}
        bad = [f"{name} = {getattr(self, name)} (at least {low})" for name, low in least.items()
               if getattr(self, name) < low]
        if self.repeats >= 1 and self.repeats % 2:
            bad.append(f"repeats = {self.repeats} (an even number: block pairs AB BA … cancel a linear drift "
                       "only in twos)")
        if bad:
            raise ValueError(", ".join(bad))


def _model(name: str) -> list[str]:
    from seg.models import MODEL_NAMES  # (torch-free: the networks are imported when built)

    return [] if name in MODEL_NAMES else [f"model = {name!r} ({', '.join(MODEL_NAMES)})"]


def _loader(name: str) -> list[str]:
    from bench.loaders import LOADERS  # (standard library only at import: the loaders import torch lazily)

    return [] if name in LOADERS else [f"loader = {name!r} (registered: {', '.join(sorted(LOADERS))})"]


@dataclass
class TrainParams:
    model: str = _help("seg.models name: unet, swinunetr, dynunet", "unet")
    model_options: dict = _help("options passed to seg.models.build", {})
    shape: list = _help("spatial patch shape (D, H, W)", [128, 128, 128])
    batch: int = _help("samples per step", 1)
    lr: float = _help("AdamW learning rate", 1e-4)

    def __post_init__(self) -> None:
        _check(_model(self.model) + _sizes("shape", self.shape, 3) + _at_least(self, batch=1)
               + ([] if self.lr > 0 else [f"lr = {self.lr} (above 0)"]))


FOOTPRINT_STEPS = ("train", "infer", "infer_volume")


def _overlap(overlap: float) -> list[str]:
    return [] if 0 <= overlap < 1 else [f"overlap = {overlap} (a share of the window, in [0, 1))"]


@dataclass
class FootprintParams(TrainParams):
    """TrainParams of the step whose peak memory `footprint` estimates (no step runs)."""

    anchor_peak_gib: dict = _help(
        "variant -> peak GiB measured for the same configuration (shared/ANCHORS.md), shown beside", {}
    )
    step: str = _help(
        "what to estimate: 'train' (one optimizer step of `batch` samples), 'infer' (one sliding-window "
        "batch: `batch` windows of `shape`, forward without autograd, eval mode) or 'infer_volume' (the "
        "whole sliding-window inference of one `volume`: windows of `shape`, `batch` per forward, "
        "stitching buffers and softmax included; tta variants: all 8 flips)", "train"
    )
    volume: list = _help("infer_volume: the input volume (X, Y, Z), 4 channels", [240, 240, 155])
    overlap: float = _help("infer_volume: sliding-window overlap", 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step not in FOOTPRINT_STEPS:
            raise ValueError(f"step {self.step!r}: choose {', '.join(FOOTPRINT_STEPS)}")
        _check(_sizes("volume", self.volume, 3) + _overlap(self.overlap))


@dataclass
class E2EParams(TrainParams):
    """TrainParams fed by a loader; `shape` is unused (the batches' shape is the data's)."""

    UNUSED = ("shape",)  # not a field (no annotation): left out of the rows' recorded params

    loader: str = _help("loader registered in bench.loaders", "default")
    workers: int = _help("DataLoader worker processes", 2)
    patch: list | None = _help("random crop size, or none for whole prepared volumes", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(_loader(self.loader) + _sizes("patch", self.patch, 3) + _at_least(self, workers=0))


@dataclass
class LoaderParams:
    loader: str = _help("loader registered in bench.loaders", "default")
    batch: int = _help("samples per batch", 1)
    workers: int = _help("DataLoader worker processes", 2)
    patch: list | None = _help("random crop size, or none for whole prepared volumes", None)
    train: bool = _help("with the seed's training augmentations", True)

    def __post_init__(self) -> None:
        _check(_loader(self.loader) + _sizes("patch", self.patch, 3) + _at_least(self, batch=1, workers=0))


@dataclass
class InferParams:
    model: str = _help("seg.models name", "swinunetr")
    model_options: dict = _help("options passed to seg.models.build", {})
    volume: list = _help("spatial shape of the one volume predicted", [240, 240, 155])
    roi: list = _help("sliding-window size", [128, 128, 128])
    overlap: float = _help("sliding-window overlap", 0.5)
    sw_batch_size: int = _help("windows per forward", 4)
    mode: str = _help("window blending: gaussian or constant", "gaussian")

    def __post_init__(self) -> None:
        modes = ("gaussian", "constant")
        _check(_model(self.model) + _sizes("volume", self.volume, 3) + _sizes("roi", self.roi, 3)
               + _overlap(self.overlap)
               + _at_least(self, sw_batch_size=1)
               + ([] if self.mode in modes else [f"mode = {self.mode!r} ({' or '.join(modes)})"]))


@dataclass
class NormParams:
    shape: list = _help("input shape (N, C, D, H, W)", [2, 32, 128, 128, 128])
    negative_slope: float = _help("LeakyReLU slope", 0.01)
    eps: float = _help("normalization epsilon", 1e-5)

    def __post_init__(self) -> None:
        _check(_sizes("shape", self.shape, 5) + ([] if self.eps > 0 else [f"eps = {self.eps} (above 0)"]))


PARAMS: dict[str, type] = {
    "train_step": TrainParams,
    "train_e2e": E2EParams,
    "dataloader": LoaderParams,
    "infer": InferParams,
    "norm_kernel": NormParams,
    "footprint": FootprintParams,
}
NEEDS_DATA = ("train_e2e", "dataloader")


@dataclass
class DataSpec:
    """Tiny prepared data a suite makes itself when `--data` is not given."""

    cases: int = _help("synthetic cases", 4)
    shape: list = _help("synthetic volume shape", [96, 96, 64])
    size: int = _help("prepared cube size", 32)
    format: str = _help("prepared format: pt32 or compact", "pt32")

    def __post_init__(self) -> None:
        formats = ("pt32", "compact")
        _check(_sizes("shape", self.shape, 3) + _at_least(self, cases=1, size=8)
               + ([] if self.format in formats else [f"format = {self.format!r} ({' or '.join(formats)})"]))


@dataclass
class Workload:
    kind: str
    name: str
    variants: list[str]
    params: Any
    measure: Measure
    baseline: str | None = None
    reference: str | None = "fp32"
    interleave: bool = True
    timeout_s: float = 600.0


@dataclass
class Goal:
    """A target the report checks one case against (e.g. issue 7's); the verdict is the report's."""

    case: str = _help("the 'workload/variant' judged")
    what: str = _help("what the goal is, in words", "")
    max_s_per_iter: float | None = _help("median s/iter at most this", None)
    min_speedup: dict = _help("'workload/variant' -> its median s/iter over this case's, at least", {})
    max_peak_gib: float | None = _help("peak memory at most this many GiB", None)
    max_parity: float | None = _help("parity max_rel_dev against the reference at most this", None)
    max_grad_dev: float | None = _help(
        "parity grad_rel_dev (first step's gradients, relative L2) against the reference at most this", None)
    card: str = _help("the GPU the s/iter target is for, as part of its name (H100): measured on another "
                      "card, it carries a caveat", "")

    def __post_init__(self) -> None:
        limits = {"max_s_per_iter": self.max_s_per_iter, "max_peak_gib": self.max_peak_gib,
                  "max_parity": self.max_parity, "max_grad_dev": self.max_grad_dev}
        limits.update({f"min_speedup {case}": value for case, value in self.min_speedup.items()})
        _check([f"{key} = {value!r} (a number above 0)" for key, value in limits.items()
                if value is not None and not (is_number(value) and value > 0)])


@dataclass
class Suite:
    name: str
    description: str
    device: str
    workloads: list[Workload]
    path: Path
    timeout_s: float = 600.0
    budget_s: float | None = None
    data: DataSpec = field(default_factory=DataSpec)
    run_last: list[str] = field(default_factory=list)  # "workload/variant" cases run after all others
    # "workload/variant" -> s/iter measured for ANCHORS.md (stock MONAI, one H100), shown beside ours
    anchors: dict[str, float] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)

    def cases(self) -> list[tuple[Workload, str]]:
        """(workload, variant) in report order (the file's order)."""
        return [(w, v) for w in self.workloads for v in w.variants]

    def run_order(self) -> list[tuple[int, Workload, str]]:
        """(report index, workload, variant) in execution order: `run_last` cases at the end."""
        indexed = [(i, w, v) for i, (w, v) in enumerate(self.cases())]
        last = [c for c in indexed if f"{c[1].name}/{c[2]}" in self.run_last]
        return [c for c in indexed if c not in last] + sorted(
            last, key=lambda c: self.run_last.index(f"{c[1].name}/{c[2]}")
        )


def recorded_params(params: Any) -> dict:
    """A workload's params as its rows record them (what a compare checks for set-up differences):
    every field but those its class does not use."""
    return {k: v for k, v in dataclasses.asdict(params).items() if k not in getattr(params, "UNUSED", ())}
