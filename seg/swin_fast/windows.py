"""Shifted-window geometry as index maps: pad + roll + partition (and back) as one gather each way.

MONAI's Swin block pads the normalized tokens to a multiple of the window, rolls them by the shift,
permutes them into windows, and after attention permutes, rolls and crops them back: three to four
copies each way, plus a shift mask rebuilt by Python loops on every forward. Here one index map
sends every window slot to the raster token that fills it (or to a zero pad slot), and one inverse
map sends every raster token to its window slot. Both are built once per (batch, shape, window,
shift, device) from `arange` arithmetic; under torch.compile the batch-1 maps are graph constants,
extended to the batch in the graph (`with_batch`).

Window order. Under a shift, a window's mask depends only on which axes its window straddles the
roll seam (the last window along a shifted axis), so there are at most 2**dims distinct masks.
Windows are ordered group by group (interior windows first), and inside a group window-major with
the batch inner: every group is then one contiguous run of (window, batch) rows that shares one
(heads, N, N) bias, for any batch size, instead of a (windows, heads, N, N) bias per forward.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

MASK_VALUE = -100.0  # MONAI's compute_mask fills cross-region pairs with -100 (not -inf): kept exact
BIAS_ALIGN = 16  # SDPA's memory-efficient kernel wants the bias rows aligned (8 elements); 16 covers both


class WindowGroup(NamedTuple):
    start: int  # first row (over window * batch) of the group
    end: int
    mask: torch.Tensor | None  # (N, Np) float32 additive shift mask, zero-padded to Np columns; None: no mask


class WindowGeometry(NamedTuple):
    """How one block's raster tokens (B*L rows) map to attention-window rows (windows*B*N rows)."""

    batch: int
    dims: tuple[int, ...]
    window: tuple[int, ...]
    shift: tuple[int, ...]
    tokens: int  # N, tokens per window
    src: torch.Tensor  # (rows,) int64: raster row feeding each window slot (0 at pad slots)
    pad_rows: torch.Tensor | None  # (pads,) int64: window slots that are padding; None when none are
    inv: torch.Tensor  # (B*L,) int64: window slot of each raster row
    groups: tuple[WindowGroup, ...]


def map_tensors(geo: WindowGeometry, fn) -> WindowGeometry:
    """`geo` with `fn` applied to each of its tensors (e.g. a fake mode's from_tensor)."""

    def f(t):
        return None if t is None else fn(t)

    groups = tuple(WindowGroup(g.start, g.end, f(g.mask)) for g in geo.groups)
    return geo._replace(
        src=f(geo.src), pad_rows=f(geo.pad_rows), inv=f(geo.inv), groups=groups
    )


def padded_tokens(n: int) -> int:
    return -(-n // BIAS_ALIGN) * BIAS_ALIGN


def _axis_window_sets(grid: int, shifted: bool) -> tuple[tuple[int, int], ...]:
    """Per axis, the window-index ranges of its (unsplit, split) classes; split = straddles the seam."""
    if not shifted:
        return ((0, grid),)
    return ((0, grid - 1), (grid - 1, grid))


def _group_mask(
    window: tuple[int, ...], shift: tuple[int, ...], split: tuple[bool, ...], device: torch.device
) -> torch.Tensor | None:
    """The MONAI shift mask shared by every window whose seam-straddling axes are `split`.

    compute_mask labels the padded grid by three regions per axis; a window off the seam sees one
    region on that axis, a window on the seam sees region 1 for offsets < w - s and region 2 after.
    Only label equality matters, so labels are rebuilt per window offset (0/1 per split axis).
    """
    if not any(split):
        return None
    n = math.prod(window)
    label = torch.zeros(window, dtype=torch.int64, device=device)
    for axis, (w, s, on_seam) in enumerate(zip(window, shift, split, strict=True)):
        label = label * 3
        if on_seam:
            shape = [1] * len(window)
            shape[axis] = w
            label = label + (torch.arange(w, device=device) >= w - s).view(shape).long()
    label = label.reshape(n)
    mask = (label[:, None] != label[None, :]).float() * MASK_VALUE
    return F.pad(mask, (0, padded_tokens(n) - n))


@functools.lru_cache(maxsize=32)
def cached_geometry(
    batch: int, dims: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> WindowGeometry:
    """`build_geometry`, once per (batch, shape, window, shift, device) for the whole process (the
    blocks of a stage share theirs; ~7 MB of index maps at 64^3 tokens)."""
    # normal tensors even when first asked for under torch.inference_mode: training later saves
    # them for backward, which inference tensors refuse
    with torch.inference_mode(False), torch.no_grad():  # (inference_mode(False) turns grad mode on)
        return build_geometry(batch, dims, window, shift, device)


# Under torch.compile the geometry is built eagerly at trace time and embedded in the graph as
# constants: the ~100 index ops per block never enter the graph (fewer nodes to trace and compile,
# nothing to recompute per step), and `nonzero` (data-dependent) stays allowed.
@torch.compiler.assume_constant_result
def traced_geometry(
    batch: int, dims: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> WindowGeometry:
    return cached_geometry(batch, dims, window, shift, device)  # (a plain function: dynamo inlines lru_cache)


def with_batch(geo: WindowGeometry, batch) -> WindowGeometry:
    """A batch-1 geometry extended to `batch` samples by index arithmetic (`build_geometry` of a
    batch is this). Under torch.compile it runs in the graph, so `batch` may be symbolic
    (a sliding window's smaller last batch after automatic dynamic): no graph break at the geometry.

    Every window keeps its rank, its rows now `batch` runs of N slots (window-major, batch inner), so
    slot i of window w moves from row w*N + i to (w*batch + b)*N + i and reads raster row src + b*L."""
    n, tokens = geo.tokens, math.prod(geo.dims)
    per_sample = torch.arange(batch, device=geo.src.device)

    def spread(slot: torch.Tensor) -> torch.Tensor:  # batch-1 slots -> sample 0's slots in `batch` rows
        return (slot // n) * (batch * n) + slot % n

    src = (geo.src.view(-1, 1, n) + (per_sample * tokens).view(1, -1, 1)).reshape(-1)
    inv = (spread(geo.inv)[None, :] + (per_sample * n)[:, None]).reshape(-1)
    pad_rows = None
    if geo.pad_rows is not None:
        pad_rows = (spread(geo.pad_rows)[:, None] + (per_sample * n)[None, :]).reshape(-1)
    # constructors and a list, not _replace and a generator: dynamo traces these
    groups = tuple([WindowGroup(g.start * batch, g.end * batch, g.mask) for g in geo.groups])
    return WindowGeometry(batch, geo.dims, geo.window, geo.shift, n, src, pad_rows, inv, groups)


def build_geometry(
    batch: int,
    dims: tuple[int, ...],
    window: tuple[int, ...],
    shift: tuple[int, ...],
    device: torch.device,
) -> WindowGeometry:
    """Index maps for one block: window size and shift as MONAI's get_window_size returns them.

    Built eagerly (`nonzero` for the pad rows is data-dependent): under torch.compile through
    `traced_geometry`, shapes static (see blocks.py). Several samples: the batch-1 maps extended by
    `with_batch`, the one way a batch is laid out, eager or compiled.
    """
    geo = _sample_geometry(dims, window, shift, device)
    return geo if batch == 1 else with_batch(geo, batch)


def _sample_geometry(
    dims: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> WindowGeometry:
    """`build_geometry` of one sample."""
    k = len(dims)
    # plain loops and lists (no generator expressions): dynamo traces this whole function
    padded = tuple([-(-d // w) * w for d, w in zip(dims, window, strict=True)])
    grid = tuple([p // w for p, w in zip(padded, window, strict=True)])
    masked = any([s > 0 for s in shift])  # MONAI rolls and masks only when some axis is shifted
    n = math.prod(window)
    raster_stride = [math.prod(dims[a + 1 :]) for a in range(k)]
    grid_stride = [math.prod(grid[a + 1 :]) for a in range(k)]
    offset_stride = [math.prod(window[a + 1 :]) for a in range(k)]

    srcs, valids, window_ids, groups = [], [], [], []
    row = 0
    classes = [_axis_window_sets(g, masked and s > 0) for g, s in zip(grid, shift, strict=True)]
    for choice in itertools.product(*classes):
        count = math.prod([hi - lo for lo, hi in choice])
        if count == 0:
            continue
        src = torch.zeros((), dtype=torch.int64, device=device)
        ok = torch.ones((), dtype=torch.bool, device=device)
        wid = torch.zeros((), dtype=torch.int64, device=device)
        split = []
        for a, (lo, hi) in enumerate(choice):
            idx = torch.arange(lo, hi, device=device)
            # slot coordinate in the rolled, padded frame -> coordinate in the padded raster
            coord = (idx[:, None] * window[a] + torch.arange(window[a], device=device) + shift[a]) % padded[a]
            shape = [1] * (2 * k)
            shape[a], shape[k + a] = hi - lo, window[a]
            coord = coord.view(shape)
            src = src + coord * raster_stride[a]
            ok = ok & (coord < dims[a])
            wid_shape = [1] * (2 * k)
            wid_shape[a] = hi - lo
            wid = wid + idx.view(wid_shape) * grid_stride[a]
            split.append(masked and shift[a] > 0 and hi == grid[a] and lo == grid[a] - 1)
        srcs.append(torch.where(ok, src, 0).reshape(-1))
        valids.append(ok.reshape(-1))
        window_ids.append(wid.reshape(-1))
        groups.append(WindowGroup(row, row + count, _group_mask(window, shift, tuple(split), device)))
        row += count
    src = torch.cat(srcs)
    order = torch.cat(window_ids)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=device))

    # inverse: raster token -> its slot (window rank, offset in window)
    win = torch.zeros((), dtype=torch.int64, device=device)
    off = torch.zeros((), dtype=torch.int64, device=device)
    for a in range(k):
        coord = (torch.arange(dims[a], device=device) - shift[a]) % padded[a]
        shape = [1] * k
        shape[a] = dims[a]
        win = win + (coord // window[a]).view(shape) * grid_stride[a]
        off = off + (coord % window[a]).view(shape) * offset_stride[a]
    inv = rank[win.reshape(-1)] * n + off.reshape(-1)

    pad_rows = (~torch.cat(valids)).nonzero().squeeze(1) if padded != tuple(dims) else None
    return WindowGeometry(1, tuple(dims), tuple(window), tuple(shift), n, src, pad_rows, inv, tuple(groups))


def _zero_rows(rows: torch.Tensor, pad_rows: torch.Tensor) -> torch.Tensor:
    """rows with `pad_rows` zeroed: in place in eager (the rows are this op's fresh output); out of
    place under torch.compile, where torch 2.11's dynamo got the gradients of the in-place version
    wrong in these autograd.Functions (inductor fuses the fill into the gather either way)."""
    if torch.compiler.is_compiling():
        return rows.index_fill(0, pad_rows, 0)
    return rows.index_fill_(0, pad_rows, 0)


class _ToWindows(torch.autograd.Function):
    """Raster rows (B*L, C) -> window rows (windows*B*N, C), pads zero; backward is the inverse gather."""

    @staticmethod
    def forward(ctx, x, geo_src, geo_inv, pad_rows):
        ctx.save_for_backward(geo_inv)
        out = x.index_select(0, geo_src)
        return out if pad_rows is None else _zero_rows(out, pad_rows)

    @staticmethod
    def backward(ctx, grad):
        (geo_inv,) = ctx.saved_tensors
        return grad.index_select(0, geo_inv), None, None, None


class _FromWindows(torch.autograd.Function):
    """Window rows -> raster rows (drops pads: the crop); backward gathers back and zeroes pad slots."""

    @staticmethod
    def forward(ctx, rows, geo_src, geo_inv, pad_rows):
        ctx.save_for_backward(geo_src, pad_rows)
        return rows.index_select(0, geo_inv)

    @staticmethod
    def backward(ctx, grad):
        geo_src, pad_rows = ctx.saved_tensors
        out = grad.index_select(0, geo_src)
        return (out if pad_rows is None else _zero_rows(out, pad_rows)), None, None, None


def to_windows(x: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(B*L, C) raster rows -> (windows*B*N, C) window rows in the geometry's group order."""
    return _ToWindows.apply(x, geo.src, geo.inv, geo.pad_rows)


def from_windows(rows: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(windows*B*N, C) window rows -> (B*L, C) raster rows, pad slots dropped."""
    return _FromWindows.apply(rows, geo.src, geo.inv, geo.pad_rows)
