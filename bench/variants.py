"""The variant registry: one small function per variant, composed in suites with `+`.

A variant name such as `bf16+channels_last+compile:max-autotune` is split on `+`; each part is
`name` or `name:argument` and its function edits a `CaseConfig` in order. A function raises
`Unavailable(reason)` when the variant cannot run in this context (no CUDA, model without the
option); the case then becomes a row with `status: unavailable`. Checks that need torch (is
Triton usable?) happen when the workload applies the config, inside the case's subprocess.

Standard library only: the suite loader validates names without importing torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from seg.speed import COMPILE_MODES, CUDAGRAPH_MODES


class Unavailable(Exception):
    """This variant cannot run here; the message says why."""


@dataclass
class CaseConfig:
    """Everything a variant can change about a case. Defaults: fp32 eager, the model's own options."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 trains with a GradScaler)
    tf32: bool = False  # TF32 tensor cores for fp32 matmuls and convolutions
    channels_last: bool = False  # model and inputs in channels_last_3d
    compile_mode: str | None = None  # None: eager; else a torch.compile mode
    inductor: tuple[str, ...] = ()  # torch._inductor.config options for the compile, "NAME=VALUE"
    checkpointing: bool | None = None  # None: the workload's model options decide
    checkpoint_modules: tuple[str, ...] = ()  # seg.recompute: submodules recomputed in backward
    sdpa: bool = False  # SwinUNETR use_flash_attention (torch scaled_dot_product_attention)
    fused_norm: bool = False  # kernels.patch: Triton fused norm + activation
    swin_fast: bool = False  # seg.swin_fast weight-compatible fast SwinUNETR
    swin_attention: str = "sdpa"  # the fast path's window attention: sdpa | triton (kernels.window_attention)
    tta: bool = False  # inference with test-time augmentation (flips)
    workers: int | None = None  # DataLoader workers (None: the workload's)
    loader: str | None = None  # bench.loaders name (None: the workload's)
    fail: str | None = None  # harness self-test: raise this message inside the case

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CaseConfig:
        cfg = cls(**data)
        cfg.checkpoint_modules = tuple(cfg.checkpoint_modules)  # lists in JSON
        cfg.inductor = tuple(cfg.inductor)
        return cfg


@dataclass
class VariantContext:
    kind: str  # workload kind: train_step, train_e2e, dataloader, infer, norm_kernel, footprint
    model: str | None  # seg.models name, None for workloads without a model
    device: str  # cpu | cuda


@dataclass
class VariantDef:
    name: str
    help: str
    apply: Callable[[CaseConfig, VariantContext, str | None], None]
    takes_arg: bool = False
    shown: str = ""  # how --list writes it, e.g. compile[:MODE]


REGISTRY: dict[str, VariantDef] = {}
MODEL_KINDS = ("train_step", "train_e2e", "infer", "footprint")
TRAIN_KINDS = ("train_step", "train_e2e", "footprint")  # footprint: the train_step's estimated memory
LOADER_KINDS = ("train_e2e", "dataloader")
# torch.compile modes: the list segbench train/infer accept too (seg.speed, standard library only)


def variant(name: str, help: str, takes_arg: bool = False, shown: str = ""):
    def register(fn: Callable[[CaseConfig, VariantContext, str | None], None]):
        REGISTRY[name] = VariantDef(
            name, help, fn, takes_arg, shown or (f"{name}:ARG" if takes_arg else name)
        )
        return fn

    return register


def _need(condition: bool, reason: str) -> None:
    if not condition:
        raise Unavailable(reason)


def _need_model(ctx: VariantContext) -> None:
    _need(ctx.kind != "dataloader", "the loader alone has no model")


@variant("eager", "no change: PyTorch eager, fp32 unless combined with a precision")
def _eager(cfg, ctx, arg):
    pass


@variant(
    "fp32", "float32, no autocast (PyTorch defaults: cuDNN may use TF32 for convolutions, matmuls may not)"
)
def _fp32(cfg, ctx, arg):
    _need_model(ctx)
    cfg.precision = "fp32"


@variant("tf32", "float32 with TF32 tensor cores for matmuls too (CUDA); with bf16/fp16, what runs outside "
                 "autocast")
def _tf32(cfg, ctx, arg):
    _need_model(ctx)
    _need(ctx.device == "cuda", "TF32 is a CUDA tensor-core mode")
    cfg.tf32 = True  # fp32 on its own; with bf16/fp16, for what runs outside autocast


@variant("bf16", "bfloat16 autocast")
def _bf16(cfg, ctx, arg):
    _need_model(ctx)
    cfg.precision = "bf16"


@variant("fp16", "float16 autocast (training adds a GradScaler)")
def _fp16(cfg, ctx, arg):
    _need_model(ctx)
    cfg.precision = "fp16"


@variant("channels_last", "model and inputs in channels_last_3d memory format")
def _channels_last(cfg, ctx, arg):
    _need_model(ctx)
    cfg.channels_last = True


@variant(
    "compile",
    "torch.compile; `compile:MODE` picks a mode (max-autotune, reduce-overhead, ...)",
    True,
    "compile[:MODE]",
)
def _compile(cfg, ctx, arg):
    mode = arg or "default"
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    _need_model(ctx)
    # a CPU has no CUDA graphs: the row would carry the mode's name and time the default compile
    _need(mode not in CUDAGRAPH_MODES or ctx.device == "cuda" or ctx.kind == "footprint",
          f"compile:{mode} captures CUDA graphs, which need CUDA")
    cfg.compile_mode = mode


@variant(
    "inductor",
    "with compile: set one torch._inductor.config option for the case, repeatable (e.g. "
    "inductor:triton.mix_order_reduction=0, inductor:coordinate_descent_tuning=1); names and values are "
    "checked in the case",
    True,
    "inductor:NAME=VALUE",
)
def _inductor(cfg, ctx, arg):
    name, sep, value = (arg or "").partition("=")
    if not sep or not name or not value:
        raise ValueError(f"inductor takes NAME=VALUE, e.g. inductor:coordinate_descent_tuning=1, not {arg!r}")
    from seg.speed import UnknownInductorOption, inductor_options

    try:  # a value the option cannot take is a mistake on any machine (a ValueError: refused at load)
        inductor_options([arg])
    except UnknownInductorOption:  # perhaps another torch's option: the case says unavailable when it runs
        pass
    cfg.inductor = (*cfg.inductor, arg)


@variant(
    "ckpt",
    "gradient checkpointing: `ckpt` of the Swin blocks (SwinUNETR use_checkpoint); `ckpt:NAME,NAME` of "
    "the named submodules of any model (seg.recompute; names or fnmatch patterns, e.g. ckpt:encoder1)",
    True,
    "ckpt[:MODULES]",
)
def _ckpt(cfg, ctx, arg):
    _need(ctx.kind in TRAIN_KINDS, "checkpointing only matters when training")
    if arg:
        names = tuple(name for name in arg.split(",") if name)
        if not names:
            raise ValueError(f"ckpt:{arg} names no module; ckpt:NAME[,NAME...]")
        cfg.checkpoint_modules = tuple(dict.fromkeys(cfg.checkpoint_modules + names))
        return
    _need(ctx.model == "swinunetr",
          f"{ctx.model} has no gradient-checkpointing option (name its modules: ckpt:NAME)")
    cfg.checkpointing = True


@variant("no_ckpt", "gradient checkpointing off, whatever else in the name turns it on (seed+no_ckpt)")
def _no_ckpt(cfg, ctx, arg):
    _need(ctx.kind in MODEL_KINDS, "no model in this workload")
    cfg.checkpointing = False
    cfg.checkpoint_modules = ()


@variant(
    "sdpa",
    "MONAI SwinUNETR use_flash_attention: scaled_dot_product_attention at inference only (MONAI skips it "
    "whenever autograd records, so training steps run the plain attention; rows' attention_kernels say so)",
)
def _sdpa(cfg, ctx, arg):
    _need(ctx.model == "swinunetr", f"{ctx.model} has no attention")
    cfg.sdpa = True


def _need_triton(ctx: VariantContext) -> None:
    _need(
        ctx.device == "cuda" or ctx.kind == "footprint",  # an estimate runs the ops' fake kernels
        "the Triton kernels run on CUDA (the interpreter is for tests, not timing)",
    )


@variant("fused_norm", "Triton fused normalization + activation (kernels.patch / kernels.fused_norm_act)")
def _fused_norm(cfg, ctx, arg):
    _need_model(ctx)
    _need_triton(ctx)
    cfg.fused_norm = True


@variant("swin_fast", "seg.swin_fast: the weight-compatible fast SwinUNETR")
def _swin_fast(cfg, ctx, arg):
    _need(ctx.model == "swinunetr", f"swin_fast is a SwinUNETR path, not {ctx.model}")
    cfg.swin_fast = True


@variant(
    "triton_attn",
    "with swin_fast: window attention through kernels.window_attention (Triton, the bias gradient summed "
    "inside the backward) instead of SDPA; experimental",
)
def _triton_attn(cfg, ctx, arg):
    _need(ctx.model == "swinunetr", f"triton_attn is a SwinUNETR option, not {ctx.model}")
    _need_triton(ctx)
    cfg.swin_attention = "triton"


@variant("tta", "inference with test-time augmentation (flips)")
def _tta(cfg, ctx, arg):
    # footprint: for its whole-volume inference estimates (step = "infer_volume")
    _need(ctx.kind in ("infer", "footprint"), "test-time augmentation is an inference option")
    cfg.tta = True


@variant("workers", "DataLoader worker processes", True, "workers:N")
def _workers(cfg, ctx, arg):
    if arg is None or not arg.isdigit():
        raise ValueError(f"workers needs a count, e.g. workers:4 (got {arg!r})")
    _need(ctx.kind in LOADER_KINDS, "no data loader in this workload")
    cfg.workers = int(arg)


@variant("loader", "a loader registered in bench.loaders", True, "loader:NAME")
def _loader(cfg, ctx, arg):
    from bench.loaders import LOADERS

    if not arg:
        raise ValueError("loader needs a name, e.g. loader:default")
    if arg not in LOADERS:  # a typo on every machine: refused at load, not an unavailable row
        raise ValueError(f"no loader {arg!r} registered (have {', '.join(sorted(LOADERS))})")
    _need(ctx.kind in LOADER_KINDS, "no data loader in this workload")
    cfg.loader = arg


@variant(
    "seed",
    "the seed project's recipe: fp16 autocast + GradScaler, checkpointing where the model has it, eager",
)
def _seed(cfg, ctx, arg):
    _need(ctx.kind in MODEL_KINDS, "the seed recipe trains and runs a model: this workload has none")
    cfg.precision = "fp16"
    if ctx.model == "swinunetr" and ctx.kind in TRAIN_KINDS:
        cfg.checkpointing = True


@variant(
    "fail",
    "harness self-test: `fail:MESSAGE` raises in the case; fail:crash segfaults, fail:hang hangs",
    True,
)
def _fail(cfg, ctx, arg):
    cfg.fail = arg or "injected failure"


def _parts(name: str) -> list[tuple[str, str | None]]:
    parts = []
    for part in name.split("+"):
        key, _, arg = part.strip().partition(":")
        if key not in REGISTRY:
            raise ValueError(f"unknown variant {key!r} in {name!r}; known: {', '.join(sorted(REGISTRY))}")
        if arg and not REGISTRY[key].takes_arg:
            raise ValueError(f"variant {key!r} takes no argument (in {name!r})")
        if (key, arg or None) in parts:  # (a repeated part would make a second name for one case)
            raise ValueError(f"{name!r}: {part.strip()} given twice")
        parts.append((key, arg or None))
    return parts


def case_key(name: str) -> tuple:
    """What `name` runs, whatever the order of its parts: bf16+channels_last and channels_last+bf16 are
    one case (a suite listing both would time it twice under two names)."""
    return tuple(sorted(_parts(name), key=lambda part: (part[0], part[1] or "")))


def validate(name: str, kind: str, model: str | None) -> None:
    """Raise ValueError for a malformed name (unknown part, bad argument); suites are checked at load.

    Availability is not judged here (the device is known only when the suite runs).
    """
    ctx = VariantContext(kind=kind, model=model, device="cuda")
    try:
        resolve(name, ctx)
    except Unavailable:  # one part cannot run here: still check every other part's argument
        for key, arg in _parts(name):
            try:
                REGISTRY[key].apply(CaseConfig(), ctx, arg)
            except Unavailable:
                pass


def resolve(name: str, ctx: VariantContext) -> CaseConfig:
    """The CaseConfig for `name`; raises Unavailable (cannot run here) or ValueError (bad name)."""
    cfg = CaseConfig()
    parts = _parts(name)
    one_of = (("precision", ("fp32", "bf16", "fp16", "seed")), ("torch.compile mode", ("compile", "eager")),
              ("loader", ("loader",)), ("worker count", ("workers",)))
    for what, keys in one_of:
        given = list(dict.fromkeys(f"{k}:{a}" if a else k for k, a in parts if k in keys))
        if len(given) > 1:  # else the last would win, and bf16+seed would differ from seed+bf16
            raise ValueError(f"{name!r}: {' and '.join(given)} each set the {what}; keep one")
    options = [(a or "").partition("=")[0] for k, a in parts if k == "inductor"]
    twice = sorted({option for option in options if options.count(option) > 1})
    if twice:
        raise ValueError(f"{name!r}: inductor option(s) {', '.join(twice)} given twice; keep one")
    # no_ckpt last, wherever it stands: seed+no_ckpt and no_ckpt+seed are one variant
    for key, arg in sorted(parts, key=lambda part: part[0] == "no_ckpt"):
        REGISTRY[key].apply(cfg, ctx, arg)
    if cfg.inductor and cfg.compile_mode is None:
        raise ValueError(f"{name!r}: inductor options set how torch.compile compiles; add compile")
    if cfg.swin_attention != "sdpa" and not cfg.swin_fast:
        raise ValueError(f"{name!r}: triton_attn is a window attention of the fast path; add swin_fast")
    return cfg


def describe() -> list[tuple[str, str]]:
    return [(d.shown, d.help) for d in REGISTRY.values()]
