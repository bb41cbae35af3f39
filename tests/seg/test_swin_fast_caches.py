"""The fast SwinUNETR path's caches and compilation: index maps and window biases built once where the
weights cannot change, graph constants under torch.compile, static shapes, no graph breaks."""

from __future__ import annotations

import copy
import math

import torch
from swin_pairs import (
    _layer_pair,
    _monai_rearrange,  # noqa: F401 (an autouse fixture, used by pytest)
    _pair,
    _rel,
    _run,
)

from seg.swin_fast import cached_biases, clear_caches
from seg.swin_fast.windows import build_geometry, from_windows, to_windows


def test_window_gathers_round_trip_zero_pads_and_have_true_gradients():
    """to_windows/from_windows on a padded, shifted geometry: every raster row lands in one window slot
    and comes back, pad slots are zero, and both hand-written backwards pass gradcheck."""
    batch, dims, window = 2, (3, 5, 6), (3, 4, 4)
    for shift in ((0, 0, 0), (0, 2, 2)):
        geo = build_geometry(batch, dims, window, shift, torch.device("cpu"))
        x = torch.randn(batch * 3 * 5 * 6, 2, dtype=torch.float64, requires_grad=True)
        rows = to_windows(x, geo)
        pads = batch * (3 * 8 * 8 - 3 * 5 * 6)
        assert rows.shape[0] == batch * 3 * 8 * 8 and geo.pad_rows.numel() == pads
        assert not rows[geo.pad_rows].any() and int((rows == 0).all(1).sum()) == pads
        assert torch.equal(from_windows(rows, geo), x)
        assert torch.autograd.gradcheck(lambda t, g=geo: to_windows(t, g), (x,))
        w = torch.randn(rows.shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, g=geo: from_windows(t, g), (w,))
    assert build_geometry(1, (3, 8, 8), window, (0, 2, 2), torch.device("cpu")).pad_rows is None


def test_a_batch_lays_out_each_sample_as_alone_window_major_batch_inner():
    """A batch's window rows are its samples' own window rows interleaved (window-major, batch inner:
    every window group one contiguous run of rows for any batch), and back; the groups scale with the
    batch (their masks do not), the pad rows are each sample's."""
    cpu = torch.device("cpu")
    for dims, window, shift in (((3, 5, 6), (3, 4, 4), (0, 2, 2)), ((4, 8, 8), (2, 4, 4), (0, 0, 0)),
                                ((7, 7, 7), (7, 7, 7), (3, 3, 3)), ((5, 9), (4, 4), (2, 2))):
        one = build_geometry(1, dims, window, shift, cpu)
        n, tokens = one.tokens, math.prod(dims)
        for batch in (2, 3):
            geo = build_geometry(batch, dims, window, shift, cpu)
            x = torch.randn(batch, tokens, 5, dtype=torch.float64)
            rows = to_windows(x.reshape(batch * tokens, 5), geo)
            alone = torch.stack([to_windows(x[b], one) for b in range(batch)])  # (batch, windows*N, 5)
            assert torch.equal(rows.view(-1, batch, n, 5), alone.view(batch, -1, n, 5).transpose(0, 1))
            assert torch.equal(from_windows(rows, geo), x.reshape(batch * tokens, 5))
            assert [(g.start, g.end) for g in geo.groups] == [(g.start * batch, g.end * batch)
                                                              for g in one.groups]
            for a, b in zip(geo.groups, one.groups, strict=True):
                assert (a.mask is None and b.mask is None) or torch.equal(a.mask, b.mask)
            if one.pad_rows is None:
                assert geo.pad_rows is None
            else:
                assert geo.pad_rows.numel() == batch * one.pad_rows.numel()
                assert not rows[geo.pad_rows].any()


def test_evaluation_between_fused_optimizer_steps_sees_the_new_tables():
    """Validation between training steps: a fused AdamW step (seg.recipe's optimizer) updates the
    tables in place without moving their version counters, so a no-grad forward must not reuse a
    bias built before the step."""
    from seg.recipe import build_optimizer

    ref, fast = _layer_pair()
    x = torch.randn(1, 12, 9, 9, 9)
    optimizers = [build_optimizer(m, lr=0.05) for m in (ref, fast)]
    assert all(o.defaults["fused"] for o in optimizers)
    for _ in range(2):
        for model, optimizer in zip((ref, fast), optimizers, strict=True):
            model.train()
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            model.eval()
        with torch.no_grad():
            assert _rel(fast(x), ref(x)) < 1e-5


def test_inference_biases_are_cached_only_inside_cached_biases():
    ref, fast = _layer_pair()
    ref.eval(), fast.eval()
    x = torch.randn(1, 12, 9, 9, 9)
    attentions = [blk.attn for blk in fast.blocks]
    with torch.no_grad():
        fast(x)
        assert not any(a._bias_cache for a in attentions)  # built per forward outside the scope
        with cached_biases(fast):
            before = fast(x)
            cached = [dict(a._bias_cache) for a in attentions]
            assert all(cached)
            assert torch.equal(fast(x), before)
            assert [dict(a._bias_cache) for a in attentions] == cached  # served, not rebuilt
        assert not any(a._bias_cache for a in attentions)  # dropped on leaving
        assert _rel(before, ref(x)) < 1e-5
        # a later change of the tables is seen by the next scope
        for layer in (ref, fast):
            gen = torch.Generator().manual_seed(1)
            for blk in layer.blocks:
                table = blk.attn.relative_position_bias_table
                table.add_(torch.randn(table.shape, generator=gen) * 0.5)
        with cached_biases(fast):
            assert _rel(fast(x), ref(x)) < 1e-5 and _rel(fast(x), before) > 1e-3
            twin = copy.deepcopy(fast)  # a copy made inside the scope ...
        assert not any(blk.attn.cache_biases or blk.attn._bias_cache for blk in twin.blocks)
        twin(x)  # ... does not cache outside it (an in-place step later would leave its biases stale)
        assert not any(blk.attn._bias_cache for blk in twin.blocks)


def test_cached_biases_does_not_recompile_a_compiled_model():
    import torch._dynamo
    from torch._dynamo.utils import counters

    _, fast = _layer_pair()
    fast.eval()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(fast, backend="eager")
    x = torch.randn(1, 12, 9, 9, 9)
    with torch.no_grad():
        compiled(x)
        with cached_biases(fast):
            compiled(x)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_caches_first_built_under_inference_mode_still_train():
    """A first forward under torch.inference_mode (a sanity or validation pass) caches index maps and
    biases; training afterwards must be able to save them for backward, as stock MONAI can."""
    _, fast = _layer_pair()
    clear_caches(fast)  # this process's earlier tests must not have built the maps already
    x = torch.randn(1, 12, 5, 6, 11)
    fast.eval()
    with torch.inference_mode(), cached_biases(fast):
        fast(x)
        cached = [b for blk in fast.blocks for _, biases in blk.attn._bias_cache.values() for b in biases]
        assert cached and not any(b.requires_grad or b.is_inference() for b in cached)  # no graph kept
    fast.train()
    fast(x).square().mean().backward()
    assert all(p.grad is not None for p in fast.parameters() if p.requires_grad)
    # fine-tuning with the tables frozen
    for blk in fast.blocks:
        blk.attn.relative_position_bias_table.requires_grad_(False)
    fast(x).square().mean().backward()


def test_no_graph_breaks_under_dynamo():
    """Train mode, dropout and drop-path on, batch 2: dynamo captures the whole forward in one graph."""
    import torch._dynamo

    torch._dynamo.reset()
    _, fast = _pair(torch.float32, feature_size=12, drop_rate=0.1, attn_drop_rate=0.1, dropout_path_rate=0.1)
    explanation = torch._dynamo.explain(fast)(torch.randn(2, 4, 64, 32, 32))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    # the window index maps are graph constants (at batch 1 nothing else: with_batch extends them in
    # the graph for a larger batch), not ~100 traced index ops per block
    torch._dynamo.reset()
    fast_ops = torch._dynamo.explain(fast)(torch.randn(1, 4, 64, 32, 32)).op_count
    torch._dynamo.reset()
    stock = torch._dynamo.explain(_pair(torch.float32, feature_size=12)[0])(torch.randn(1, 4, 64, 32, 32))
    assert fast_ops < stock.op_count * 0.9, (fast_ops, stock.op_count)


def test_compiled_fast_path_equals_eager():
    """torch.compile (aot_eager: dynamo + AOTAutograd, no codegen) of the fast path: same outputs and
    gradients as the eager fast path, with the window geometry embedded as constants."""
    import torch._dynamo

    torch._dynamo.reset()
    _, fast = _pair(torch.float64, feature_size=12)
    x = torch.randn(2, 4, 32, 32, 64, dtype=torch.float64)
    y, gx, g = _run(fast, x)
    y_c, gx_c, g_c = _run(torch.compile(fast, backend="aot_eager", fullgraph=True), x)
    assert _rel(y_c, y) < 1e-12 and _rel(gx_c, gx) < 1e-12
    for a, b in zip(g_c, g, strict=True):
        assert _rel(a, b) < 1e-12


def test_compiled_model_takes_new_shapes_without_graph_breaks(monkeypatch):
    """seg.speed.compile_model compiles static shapes: a second input shape (or batch) recompiles
    whole instead of turning the window geometry symbolic (graph breaks, one recompile per block)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from seg.speed import COMPILE_BACKEND_ENV, compile_model

    monkeypatch.setenv(COMPILE_BACKEND_ENV, "eager")
    torch._dynamo.reset()
    counters.clear()
    _, fast = _pair(torch.float32, feature_size=12)
    compiled = compile_model(fast)
    for shape in ((1, 4, 32, 32, 64), (1, 4, 64, 32, 32), (2, 4, 32, 32, 64)):
        x = torch.randn(shape)
        assert _rel(compiled(x), fast(x)) < 1e-5
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 3
    torch._dynamo.reset()


def test_plain_torch_compile_takes_a_new_batch_size_without_graph_breaks():
    """A user's own torch.compile (automatic dynamic): after a second batch size the batch turns
    symbolic (a sliding window's smaller last batch does this); the window maps follow it in the
    graph instead of graph-breaking at every block (each stage's batch-1 maps stay constants)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _, fast = _pair(torch.float32, feature_size=12)
    fast.eval()
    compiled = torch.compile(fast, backend="eager")
    with torch.no_grad():
        for batch in (2, 3, 1):
            x = torch.randn(batch, 4, 32, 32, 64)
            assert _rel(compiled(x), fast(x)) < 1e-5
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 3  # batch 2, then a symbolic batch, then batch 1
    torch._dynamo.reset()


def test_cached_biases_are_kept_per_dtype():
    from monai.networks.nets.swin_unetr import BasicLayer

    from seg.swin_fast import cached_biases
    from seg.swin_fast.convert import fast_layer
    from seg.swin_fast.windows import build_geometry

    torch.manual_seed(0)
    layer = fast_layer(BasicLayer(dim=12, depth=2, num_heads=3, window_size=(7, 7, 7), drop_path=[0, 0]))
    attn = layer.blocks[1].attn
    geo = build_geometry(1, (9, 9, 9), (7, 7, 7), (3, 3, 3), torch.device("cpu"))
    with torch.no_grad(), cached_biases(layer):
        fp32 = attn.group_biases(geo, torch.float32)
        bf16 = attn.group_biases(geo, torch.bfloat16)
    assert all(b.dtype == torch.float32 for b in fp32) and all(b.dtype == torch.bfloat16 for b in bf16)
