"""Fast subclasses of MONAI's Swin modules: same parameters and buffers, token-major forward.

`convert.to_fast` swaps a built model's classes to these in place (`module.__class__ = ...`), so
every parameter stays the same tensor, every state_dict key stays the same, and each module still
answers MONAI's own call contract (`forward` of a block or an attention module is MONAI's, untouched).
The fast route is taken from the top: SwinTransformer.forward keeps tokens channels-last between
stages (MONAI permutes to channels-first and back around every stage) and runs each block on
(B, L, C) raster rows, with attention windows reached through the index maps of `windows`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from monai.networks.nets.swin_unetr import (
    BasicLayer,
    SwinTransformer,
    SwinTransformerBlock,
    SwinUNETR,
    get_window_size,
)
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import is_fake
from torch.utils._python_dispatch import _disable_current_modes

from .windows import (
    WindowGeometry,
    cached_geometry,
    map_tensors,
    to_windows,
    traced_geometry,
    with_batch,
)


class FastSwinTransformerBlock(SwinTransformerBlock):
    fast_entry = "forward_tokens"  # what the fast path calls instead of forward (seg.recompute checks)

    def _attention_part(self, x: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
        b, l, c = x.shape
        rows = to_windows(self.norm1(x).reshape(b * l, c), geo)  # pad + roll + partition, one gather
        return self.attn.forward_windows(rows, geo).view(b, l, c)

    def forward_tokens(self, x: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
        """x: (B, L, C) raster tokens of the stage -> same shape; MONAI's forward on the same tokens."""
        if self.use_checkpoint:
            y = checkpoint.checkpoint(self._attention_part, x, geo, use_reentrant=False)
        else:
            y = self._attention_part(x, geo)
        x = x + self.drop_path(y)
        if self.use_checkpoint:
            return x + checkpoint.checkpoint(self.forward_part2, x, use_reentrant=False)
        return x + self.forward_part2(x)


class FastBasicLayer(BasicLayer):
    fast_entry = "forward_tokens"

    def init_fast(self) -> None:
        pass  # geometry lives in a process-wide cache (windows.cached_geometry)

    def geometry(self, x: torch.Tensor, dims: tuple[int, ...], shift_size) -> WindowGeometry:
        window, shift = get_window_size(dims, self.window_size, shift_size)
        batch = x.shape[0]
        if torch.compiler.is_compiling():
            # the batch-1 maps are graph constants, so the spatial shape must be static (a symbolic
            # one graph-breaks here; seg.speed.compile_model compiles with dynamic=False); the batch
            # may be symbolic (torch.compile's automatic dynamic after a second batch size, e.g. a
            # sliding window's smaller last batch): with_batch extends the maps in the graph
            geo = traced_geometry(1, dims, window, shift, x.device)
            return geo if batch == 1 else with_batch(geo, batch)  # (dynamo specializes batch 1)
        if is_fake(x):  # profiles.footprint: the eager maps, built for real, handed over as fakes
            # (outside every dispatch mode: counters such as profiles.traffic must not see a build
            # that real eager steps take from the cache)
            with _disable_current_modes():
                geo = cached_geometry(batch, dims, window, shift, x.device)
            return map_tensors(geo, detect_fake_mode(x).from_tensor)
        return cached_geometry(batch, dims, window, shift, x.device)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *spatial, C) channels-last, contiguous -> the stage output, channels-last (downsampled)."""
        b, *spatial, c = x.shape
        dims = tuple(spatial)
        t = x.reshape(b, -1, c)
        for blk in self.blocks:
            t = blk.forward_tokens(t, self.geometry(x, dims, blk.shift_size))
        x = t.view(b, *dims, c)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """MONAI's contract: channels-first in, channels-first out."""
        nd = x.ndim - 2
        out = self.forward_tokens(x.permute(0, *range(2, nd + 2), 1).contiguous())
        return out.permute(0, nd + 1, *range(1, nd + 1))


class FastSwinTransformer(SwinTransformer):
    def _stage_out(self, t: torch.Tensor, normalize: bool) -> torch.Tensor:
        if normalize:
            t = F.layer_norm(t, [t.shape[-1]])
        nd = t.ndim - 2
        return t.permute(0, nd + 1, *range(1, nd + 1))  # channels-first view, as MONAI's proj_out returns

    def forward(self, x: torch.Tensor, normalize: bool = True) -> list[torch.Tensor]:
        nd = x.ndim - 2
        to_last, to_first = (0, *range(2, nd + 2), 1), (0, nd + 1, *range(1, nd + 1))
        x0 = self.pos_drop(self.patch_embed(x))
        t = x0.permute(to_last).contiguous()
        outs = [self._stage_out(t, normalize)]
        stages = (self.layers1, self.layers2, self.layers3, self.layers4)
        convs = (self.layers1c, self.layers2c, self.layers3c, self.layers4c) if self.use_v2 else None
        for i, stage in enumerate(stages):
            if convs is not None:  # v2: a residual conv block (channels-first) before each stage
                cf = x0 if i == 0 else t.permute(to_first)
                t = convs[i][0](cf.contiguous()).permute(to_last).contiguous()
            t = stage[0].forward_tokens(t)
            outs.append(self._stage_out(t, normalize))
        return outs


class FastSwinUNETR(SwinUNETR):
    """MONAI's SwinUNETR.forward; only the input check changes (plain ints: no numpy, no graph break)."""

    def _check_input_size(self, spatial_shape):
        divisor = self.patch_size**5
        wrong_dims = [i + 2 for i, size in enumerate(spatial_shape) if size % divisor]
        if wrong_dims:
            raise ValueError(
                f"spatial dimensions {wrong_dims} of input image (spatial shape: {tuple(spatial_shape)})"
                f" must be divisible by {self.patch_size}**5."
            )
