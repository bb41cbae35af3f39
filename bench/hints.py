"""What to try when a case fails: known failure signatures, each mapped to one actionable line.

A failed case's row keeps its error (`Type: message`) and, from the traceback, `error_at`: the
innermost frame of the innermost cause, as `path/below/site-packages:function` — compiler errors
say little in their message (inductor's "1 v.s. 4"), but where they were raised names the pass.
`hint_for` matches both against HINTS; the report prints a matched hint beside the failure.

Standard library only: the report reads rows without importing torch.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass


@dataclass(frozen=True)
class Hint:
    pattern: str  # regular expression searched in "error\nerror_at"
    text: str  # what to try, naming the harness variant or train/infer flag that does it


HINTS: tuple[Hint, ...] = (
    Hint(
        # ANCHORS.md: stock MONAI UNet + bf16 torch.compile on an H100 fails with "1 v.s. 4", the
        # message of MixOrderReduction.get_numel_rnumel's assertion: the pass fuses reductions of one
        # tensor over different dimensions and asserts when split reductions disagree in size. UNet is
        # the one model here with PReLU (one weight: its gradient sums over everything, beside the
        # instance norm's per-channel sums): the likely pair, unconfirmed until a GPU run of the unet
        # suite's `+inductor:triton.mix_order_reduction=0` row.
        r"_inductor/scheduler\.py:get_numel_rnumel|MixOrderReduction",
        "inductor's mix-order reduction fusion (GPU-only, on by default in recent torch) rejected split "
        "reductions: compile without it, variant `+inductor:triton.mix_order_reduction=0` (segbench "
        "train/infer --inductor triton.mix_order_reduction=0; TORCHINDUCTOR_MIX_ORDER_REDUCTION=0)",
    ),
    Hint(
        r"OutOfMemoryError|CUDA out of memory",
        "out of device memory: `segbench footprint` estimates each variant's peak on the CPU; bf16, "
        "swin_fast, ckpt / ckpt:MODULES or a smaller batch lower it",
    ),
    Hint(
        r"OutOfResources|out of resource: shared memory",
        "a Triton kernel asked for more shared memory (or registers) per block than this GPU has: "
        "consumer cards have about half an H100's per SM; compile:max-autotune-no-cudagraphs tries "
        "smaller tiles, and segbench's own kernels (kernels/) list theirs in CONFIGS",
    ),
)


def error_at(err: BaseException) -> str:
    """`path:function` of the innermost frame of `err`'s innermost cause (paths from site-packages on)."""
    while err.__cause__ is not None:
        err = err.__cause__
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    path = frame.filename.replace("\\", "/")
    path = path.split("site-packages/", 1)[-1]
    return f"{path}:{frame.name}"


def hint_for(error: str, where: str = "") -> str | None:
    """The first hint whose pattern matches the error text or where it was raised, else None."""
    text = f"{error}\n{where}"
    return next((h.text for h in HINTS if re.search(h.pattern, text)), None)
