"""Window attention through `scaled_dot_product_attention` with one cached additive bias per window group.

MONAI builds the (heads, N, N) relative-position bias by a gather on every forward, adds the shift
mask to a materialized (windows, heads, N, N) score tensor, and runs softmax and dropout over it.
Here the scores never exist outside the SDPA kernel: each window group (see `windows`) gets one
bias = relative-position bias + that group's shift mask, broadcast over its (window, batch) rows.

The table is a trained parameter, so with autograd on the gather stays in the graph (one small
gather + one broadcast add per group, no larger than heads*N*N); the padded index is cached. The
gather runs in the table's dtype before its one cast to the attention's, so under bf16 autocast the
gather's backward sums the table's gradient in float32 (MONAI's bias is never cast).

Only inside `cached_biases(model)` (sliding-window inference: hundreds of forwards with the same
weights) are the finished biases cached per (geometry, dtype); everywhere else a forward builds them
(a validation pass between training steps: a fused optimizer step updates the table in place without
moving its version counter, so no key can tell that a cached bias is stale). Cached tensors are
built outside inference mode, so a first forward under torch.inference_mode does not poison later
training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention
from torch._subclasses.fake_tensor import is_fake

from .windows import WindowGeometry, from_windows, padded_tokens

_CACHE_ENTRIES = 8  # shapes kept per module (one per input shape seen: training and sliding window use one)


def _remember(cache: dict, key, value):
    if len(cache) >= _CACHE_ENTRIES:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


class FastWindowAttention(WindowAttention):
    """MONAI's WindowAttention (same parameters, same `forward`) plus `forward_windows` for the fast path."""

    fast_entry = "forward_windows"
    IMPLS = ("sdpa", "triton")

    def init_fast(self, impl: str = "sdpa") -> None:
        """impl: "sdpa" (torch's scaled_dot_product_attention) or "triton" (kernels.window_attention,
        which sums the bias gradient over the windows inside its backward; experimental)."""
        if impl not in self.IMPLS:
            raise ValueError(f"window attention {impl!r}: choose {' or '.join(self.IMPLS)}")
        self.impl = impl
        self._index_cache: dict = {}
        self._bias_cache: dict = {}
        self.cache_biases = False  # set by `cached_biases`

    def _padded_index(self, n: int, compiling: bool) -> torch.Tensor:
        """relative_position_index[:n, :n] (MONAI's slice, also for shrunk windows), columns padded."""
        index = self.relative_position_index
        key = (n, index.device, index._version, index.data_ptr()) if not compiling else None
        if key is not None and key in self._index_cache:
            return self._index_cache[key]
        if key is None:
            return F.pad(index[:n, :n], (0, padded_tokens(n) - n))
        with torch.inference_mode(False), torch.no_grad():  # saved for backward in later training
            return _remember(self._index_cache, key, F.pad(index[:n, :n], (0, padded_tokens(n) - n)))

    def group_biases(self, geo: WindowGeometry, dtype: torch.dtype) -> list[torch.Tensor]:
        """One (1, heads, N, N) additive bias per window group (a view of an aligned (.., N, Np) tensor)."""
        table = self.relative_position_bias_table
        # traced or fake (profiles.footprint, seg.cpu_bf16's shape probe: fake inputs, perhaps real
        # parameters): no caches keyed by data pointers, or a fake bias would outlive its mode
        compiling = torch.compiler.is_compiling() or is_fake(table) or is_fake(geo.src)
        frozen = not (torch.is_grad_enabled() and table.requires_grad)
        # `compiling` first: dynamo must not read (and guard on) the cache flag
        if compiling or not (frozen and self.cache_biases):
            return self._biases(table, geo, dtype, compiling)
        key = (geo.window, geo.shift, geo.dims, table.device, dtype, table._version, table.data_ptr())
        if key not in self._bias_cache:
            # normal tensors (SDPA saves them for backward when only the table is frozen), without a
            # graph: inference_mode(False) alone would turn grad mode on
            with torch.inference_mode(False), torch.no_grad():
                biases = self._biases(table, geo, dtype, False)
            # the entry holds the table's storage: its address cannot be reused by another table
            _remember(self._bias_cache, key, (table.detach(), biases))
        return self._bias_cache[key][1]

    def _biases(self, table: torch.Tensor, geo: WindowGeometry, dtype: torch.dtype, compiling: bool):
        n = geo.tokens
        index = self._padded_index(n, compiling)
        # one gather, (heads, N, Np); index_select's backward is an index_add (no sort, unlike indexing)
        # gathered in the table's dtype, then cast once: the gather's backward (an index_add summing ~50
        # entries per table row) runs in float32 under bf16 autocast
        rel = table.t().index_select(1, index.reshape(-1)).view(-1, n, index.shape[1]).to(dtype)
        biases = []
        for group in geo.groups:
            bias = rel if group.mask is None else rel + group.mask.to(device=rel.device, dtype=dtype)
            biases.append(bias[None, :, :, :n])
        return biases

    def clear_caches(self) -> None:
        """Forget the cached index and biases."""
        self._index_cache.clear()
        self._bias_cache.clear()

    def __getstate__(self) -> dict:
        # a copy (deepcopy, torch.save of the model) made inside `cached_biases` must not go on caching
        # outside it: a fused optimizer step does not bump the table's version, so its biases would go stale
        return {**super().__getstate__(), "cache_biases": False, "_bias_cache": {}, "_index_cache": {}}

    def forward_windows(self, rows: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
        """Window rows (windows*B*N, C) -> attention output as raster rows (B*L, C), projected.

        Same function as MONAI's forward + window_reverse + roll back + crop. Per-token ops commute
        with the token permutation, so the projection runs after the gather back, on the real
        tokens only (pads are dropped before it).
        """
        n, c, heads = geo.tokens, rows.shape[1], self.num_heads
        qkv = self.qkv(rows).view(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        biases = self.group_biases(geo, q.dtype)
        dropout_p = self.attn_drop.p if self.attn_drop.training else 0.0  # MONAI's nn.Dropout: its own flag
        # The groups are consecutive runs of rows. split, not q[start:end]: a slice's backward writes
        # a zero-filled gradient of the whole tensor per group (8 under a shift); split's is one cat.
        sizes = [group.end - group.start for group in geo.groups]
        outs = []
        for qg, kg, vg, bias in zip(q.split(sizes), k.split(sizes), v.split(sizes), biases, strict=True):
            if self.impl == "triton":
                from kernels.window_attention import window_attention

                out = window_attention(qg, kg, vg, bias[0], dropout_p, scale=self.scale)
            else:
                out = F.scaled_dot_product_attention(
                    qg, kg, vg, attn_mask=bias, dropout_p=dropout_p, scale=self.scale
                )
            outs.append(out.transpose(1, 2))  # (rows, N, heads, d): contiguous (both kernels write it so)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        out = from_windows(out.reshape(-1, c), geo)
        return self.proj_drop(self.proj(out))


@contextlib.contextmanager
def cached_biases(model: nn.Module) -> Iterator[None]:
    """Inside, `model`'s weights do not change: a forward without autograd reuses the window biases
    it built for the same shape (sliding-window inference). On leaving, they are dropped."""
    modules = [m for m in model.modules() if isinstance(m, FastWindowAttention)]
    before = [m.cache_biases for m in modules]
    for m in modules:
        m.cache_biases = True
    try:
        yield
    finally:
        for m, was in zip(modules, before, strict=True):
            m.cache_biases = was
            if not was:
                m._bias_cache.clear()
