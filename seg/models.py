"""Model registry: `build(name, **options)` for the three model families segbench measures.

Each builder is MONAI's own network with the seed project's configuration as defaults; options
override any constructor argument, so a benchmark variant or a user's script can change one
thing (e.g. `use_checkpoint=False`) without restating the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing the registry stays torch-free: the suite loader and the CLI read MODEL_NAMES
    import torch.nn as nn

# SwinUNETR presets. "seed": the seed project's recipe (feature 24, heavy dropout, checkpointing
# on, the configuration that took days to train). "paper": the SwinUNETR paper's feature 48.
SWIN_PRESETS: dict[str, dict[str, Any]] = {
    "seed": dict(
        feature_size=24, drop_rate=0.2, attn_drop_rate=0.2, dropout_path_rate=0.2, use_checkpoint=True
    ),
    "paper": dict(
        feature_size=48, drop_rate=0.0, attn_drop_rate=0.0, dropout_path_rate=0.0, use_checkpoint=False
    ),
}


def _unet(in_channels: int = 4, out_channels: int = 4, **options: Any) -> nn.Module:
    from monai.networks.nets import UNet

    config: dict[str, Any] = dict(
        spatial_dims=3,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="instance",
        act="PRELU",
    )
    config.update(options)
    return UNet(in_channels=in_channels, out_channels=out_channels, **config)


def _swinunetr(
    in_channels: int = 4, out_channels: int = 4, preset: str = "seed", fast: bool = False, **options: Any
) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    if preset not in SWIN_PRESETS:
        raise ValueError(f"unknown SwinUNETR preset {preset!r}; choose from {sorted(SWIN_PRESETS)}")
    config: dict[str, Any] = dict(SWIN_PRESETS[preset])
    config.update(options)
    model = SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=3, **config)
    if fast:
        from seg.swin_fast import to_fast

        # the fast path alone: the fused norms are an option of their own (fused_norm / --fused-norm),
        # so a row or run says when they are on
        model = to_fast(model, fused_norm=False)
    return model


def _dynunet(in_channels: int = 4, out_channels: int = 4, **options: Any) -> nn.Module:
    from monai.networks.nets import DynUNet

    strides = options.pop("strides", (1, 2, 2, 2, 2, 2))
    config: dict[str, Any] = dict(
        spatial_dims=3,
        kernel_size=[3] * len(strides),
        upsample_kernel_size=list(strides[1:]),
        filters=(32, 64, 128, 256, 320, 320)[: len(strides)],
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        res_block=False,
    )
    config.update(options)
    return DynUNet(in_channels=in_channels, out_channels=out_channels, strides=strides, **config)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "swinunetr": _swinunetr,
    "dynunet": _dynunet,
}

MODEL_NAMES = tuple(BUILDERS)


def build(name: str, **options: Any) -> nn.Module:
    """Build model `name` ("unet", "swinunetr", "dynunet"); 4 input and 4 output channels by default.

    `options` override the constructor arguments; `swinunetr` also takes `preset="seed"|"paper"`
    and `fast=True` (the weight-compatible fast path).
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    _check_switches(name, options)
    try:
        return BUILDERS[name](**options)
    except TypeError as err:  # an option the network does not take, or a value of the wrong type
        if not options:
            raise
        raise ValueError(f"model {name}: bad option(s) {', '.join(sorted(options))}: {err}") from err


NETWORKS = {"unet": "UNet", "swinunetr": "SwinUNETR", "dynunet": "DynUNet"}  # monai.networks.nets


def _check_switches(name: str, options: dict[str, Any]) -> None:
    """A switch (an argument whose default is True or False) given anything but a bool is refused: MONAI
    tests them for truth, so the string "false" (a config file's spelling) would turn one on."""
    import inspect

    import monai.networks.nets as nets

    params = {**inspect.signature(getattr(nets, NETWORKS[name])).parameters,
              **inspect.signature(BUILDERS[name]).parameters}
    wrong = [f"{key}={value!r}" for key, value in options.items()
             if key in params and isinstance(params[key].default, bool) and not isinstance(value, bool)]
    if wrong:
        raise ValueError(f"model {name}: {', '.join(wrong)} must be True or False")


def input_multiple(name: str, **options: Any) -> tuple[int, int, int]:
    """Per spatial axis, the number every input edge must be a multiple of: the product of the
    encoder's strides (SwinUNETR: patch_size^5, its patch embedding and four merges). Other sizes fail deep
    inside the network with a shape mismatch that names nothing."""
    if name == "swinunetr":  # MONAI's own check: patch_size ** 5
        return (options.get("patch_size", 2) ** 5,) * 3
    default = {"unet": (2, 2, 2, 2), "dynunet": (1, 2, 2, 2, 2, 2)}[name]
    multiple = [1, 1, 1]
    for stride in options.get("strides", default):
        per_axis = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        multiple = [m * s for m, s in zip(multiple, per_axis, strict=True)]
    return tuple(multiple)  # type: ignore[return-value]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
