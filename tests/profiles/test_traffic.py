"""profiles.traffic: bytes an eager step moves, op by op, counted on fake tensors."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

from profiles.footprint import estimate_step_memory
from profiles.traffic import OpTraffic, category

MAP = 1 * 4 * 8 * 8 * 8 * 4  # one (1, 4, 8, 8, 8) fp32 map: 8 KiB


def test_hand_counted_forward():
    """relu reads x, writes y; a permute moves nothing; contiguous() reads and writes; add reads two."""
    with FakeTensorMode(), OpTraffic() as counter:
        x = torch.empty(1, 4, 8, 8, 8)
        y = torch.relu(x)
        z = y.permute(0, 2, 3, 4, 1)  # a view
        w = z.contiguous()  # one copy
        _ = w + w
    t = counter.traffic
    assert t.ops == 3
    assert t.by_op_bytes == {"relu": 2 * MAP, "clone": 2 * MAP, "add": 3 * MAP}
    assert t.bytes_moved == 7 * MAP
    assert t.by_category_bytes["layout/copy"] == 2 * MAP and t.by_category_bytes["elementwise"] == 5 * MAP


def test_categories():
    assert category("convolution_backward") == "conv"
    assert category("_scaled_dot_product_efficient_attention_backward") == "attention"
    assert category("native_layer_norm") == "norm" and category("addmm") == "matmul"
    assert category("index_select") == "layout/copy" and category("gelu") == "elementwise"
    assert category("upsample_trilinear3d") == category("upsample_trilinear3d_backward") == "elementwise"


def test_an_op_that_only_overwrites_its_argument_is_not_counted_as_reading_it():
    """copy_ reads its source and writes its destination; zero_ and fill_ only write; add_ reads both
    and writes one; an out= argument is written, not read."""
    with FakeTensorMode():
        x, y = torch.empty(1, 4, 8, 8, 8), torch.empty(1, 4, 8, 8, 8)
        steps = {"copy_": lambda: x.copy_(y), "zero_": x.zero_, "fill_": lambda: x.fill_(1.0),
                 "add_": lambda: x.add_(y), "add": lambda: torch.add(x, y, out=x),
                 "_foreach_zero_": lambda: torch._foreach_zero_([x])}
        for name, step in steps.items():
            with OpTraffic() as counter:
                step()
            expected = {"copy_": 2, "zero_": 1, "fill_": 1, "add_": 3, "add": 3, "_foreach_zero_": 1}[name]
            assert counter.traffic.by_op_bytes == {name: expected * MAP}, name


def test_footprint_carries_the_step_traffic_and_slicing_costs_more_than_split():
    """A slice's backward writes a zero-filled gradient of the whole tensor per slice; split's is
    one cat (why seg.swin_fast groups windows with split)."""

    class Groups(nn.Module):
        def __init__(self, split: bool):
            super().__init__()
            self.lin, self.split = nn.Linear(8, 8), split

        def forward(self, x):
            h = self.lin(x)
            parts = h.split(16) if self.split else [h[i : i + 16] for i in range(0, 128, 16)]
            return torch.cat([p * 2 for p in parts])

    def step(model, optimizer, x):
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def opt(m):
        return torch.optim.AdamW(m.parameters(), foreach=True)

    moved = {}
    for split in (False, True):
        fp = estimate_step_memory(Groups(split), lambda: (torch.empty(128, 8),), opt, step)
        assert fp.ops > 0 and fp.bytes_moved == sum(fp.bytes_moved_by_category.values())
        moved[split] = fp.bytes_moved
    assert moved[False] > moved[True] + 8 * 128 * 8 * 4  # 8 slices: at least 8 whole-size gradients more


def test_the_fused_optimizer_step_counts_though_it_returns_nothing():
    """Fused AdamW (what the recipe uses) mutates its tensor lists in place and returns None: its
    traffic is the lists it reads plus the ones its schema says it writes."""
    params = [nn.Parameter(torch.randn(1000)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(1000)
    opt = torch.optim.AdamW(params, fused=True)
    opt.step()  # the state exists from here on
    with OpTraffic() as mode:
        opt.step()
    per_list = 3 * 1000 * 4
    # read: params, grads, exp_avg, exp_avg_sq; written: the same four (grads: unscaled in place);
    # plus the 3 float32 step counters, read (and, as the schema may say, written): once each, no more
    adamw = mode.traffic.by_op_bytes["_fused_adamw_"]
    assert 8 * per_list + 3 * 4 <= adamw <= 8 * per_list + 2 * 3 * 4
    # the step counters' += 1 (read and write 3 x 4 bytes) is the optimizer's only other op
    assert mode.traffic.by_op_bytes == {"_fused_adamw_": adamw, "_foreach_add_": 2 * 3 * 4}
    assert mode.traffic.by_category_ops["optimizer"] >= 1
