"""Bytes an eager step moves through device memory, counted op by op (no GPU, fake tensors).

METHOD's "two numbers first": a memory-bound step cannot run faster than the bytes it must move
over the device's copy rate. `OpTraffic` is a dispatch mode that sees every ATen op an eager step
runs (forward, backward, optimizer; below autograd, so backward kernels count too) and adds up,
per op, the bytes of its tensor inputs and outputs — the traffic of a kernel that reads each input
once and writes each output once. Views (permute, slice, expand, ...) and bare allocations move
nothing and are skipped; so are metadata queries.

What it is: an eager floor and a map of where traffic goes (by category and by op), comparable
between two versions of a model (stock vs fast). What it is not: a time. Kernels that re-read their
inputs (convolutions, attention) move more; torch.compile fuses elementwise chains and moves less;
launch overhead (µs per op, eager) is outside it — `ops` counts those launches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_NO_TRAFFIC = frozenset(
    "view _unsafe_view reshape permute transpose t expand expand_as slice select as_strided unsqueeze "
    "squeeze alias detach _reshape_alias unbind split split_with_sizes chunk narrow unfold view_as "
    "lift_fresh empty empty_strided empty_like new_empty new_empty_strided".split()
)
# first match wins: the op's name (overload packet) contains the key
CATEGORIES = (
    ("elementwise", ("upsample",)),  # upsample_trilinear3d is no "linear"
    ("attention", ("attention",)),
    ("conv", ("convolution", "conv")),
    ("matmul", ("mm", "linear", "matmul", "baddbmm")),
    ("norm", ("norm",)),
    ("optimizer", ("adam", "_foreach")),
    ("layout/copy", ("copy", "clone", "cat", "pad", "roll", "index", "gather", "scatter", "flip", "stack",
                     "repeat", "contiguous", "fill", "zero")),
    ("reduce/softmax", ("sum", "mean", "amax", "max", "var", "std", "softmax")),
)


def category(op_name: str) -> str:
    for name, keys in CATEGORIES:
        if any(k in op_name for k in keys):
            return name
    return "elementwise"


def _bytes(tree) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


# in-place ops that overwrite their tensor without reading it
_WRITE_ONLY = frozenset(
    "copy_ zero_ fill_ _foreach_zero_ _foreach_copy_ uniform_ normal_ bernoulli_ random_ exponential_ "
    "geometric_ cauchy_ log_normal_".split()
)


def _argument_bytes(func, args: tuple, kwargs: dict) -> tuple[int, int]:
    """(bytes read, bytes of the arguments `func`'s schema marks as written: Tensor(a!) / Tensor(a!)[]).
    A written argument is also read unless it is an `out=` argument or the op only overwrites it."""
    read = written = 0
    for i, arg in enumerate(func._schema.arguments):
        size = _bytes(args[i] if i < len(args) else kwargs.get(arg.name))
        if arg.alias_info is not None and arg.alias_info.is_write:
            written += size
            if arg.kwarg_only or func.overloadpacket.__name__ in _WRITE_ONLY:
                continue
        read += size
    return read, written


@dataclass
class Traffic:
    """Bytes read + written by the ops of one step, and how many ops (kernel launches, eager)."""

    bytes_moved: int = 0
    ops: int = 0
    by_category_bytes: dict[str, int] = field(default_factory=dict)
    by_category_ops: dict[str, int] = field(default_factory=dict)
    by_op_bytes: dict[str, int] = field(default_factory=dict)

    def top_ops(self, n: int = 8) -> list[tuple[str, int]]:
        return sorted(self.by_op_bytes.items(), key=lambda kv: -kv[1])[:n]


class OpTraffic(TorchDispatchMode):
    """Dispatch mode: `traffic` accumulates every op's input + output bytes while active."""

    def __init__(self) -> None:
        super().__init__()
        self.traffic = Traffic()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in _NO_TRAFFIC:
            return out
        read, written = _argument_bytes(func, args, kwargs)
        if any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
            moved = read + _bytes(out)  # an in-place op's output is the argument it wrote
        elif written:  # in-place ops that return nothing (fused AdamW, _foreach_*_)
            moved = read + written
        else:  # metadata queries
            return out
        t, cat = self.traffic, category(name)
        t.bytes_moved += moved
        t.ops += 1
        t.by_category_bytes[cat] = t.by_category_bytes.get(cat, 0) + moved
        t.by_category_ops[cat] = t.by_category_ops.get(cat, 0) + 1
        t.by_op_bytes[name] = t.by_op_bytes.get(name, 0) + moved
        return out
