"""Peak memory of one training step, estimated without running it (no GPU, no real compute).

    from profiles.footprint import estimate_step_memory
    fp = estimate_step_memory(
        model,  # built for real, on the CPU; not modified
        make_inputs=lambda: (torch.empty(1, 4, 96, 96, 96), torch.zeros(1, 1, 96, 96, 96, dtype=torch.long)),
        make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), fused=True),
        step=lambda m, opt, x, y: my_train_step(m, x, y, opt),  # autocast("cpu") inside, as on CUDA
    )
    print(fp.to_markdown())

How. A copy of the model gets fake parameters and buffers (torch's FakeTensorMode: shapes, dtypes
and strides, no storage), the optimizer state is created by one untracked step (so the tracked
step is a steady-state one: AdamW's two moments exist, gradients do not, as after
`zero_grad(set_to_none=True)`), and the step runs once under torch's MemTracker, which follows
every tensor storage from creation to release and files it as Parameter, Buffer, Gradient,
Activation (made in forward, or recomputed by checkpointing), Temp (made in backward), Optstate
or Input. A subclass here also records the innermost module that made each storage, and at the
moment the total reaches its peak: the phase, the module running, and the live bytes per module.

Rules applied so the CPU run allocates what the CUDA step would (see `profiles.cuda_emulation`):
autocast follows CUDA's op lists; F.scaled_dot_product_attention runs the kernel CUDA would pick
(flash / memory-efficient / math) instead of the CPU's math path; `torch.arange` of at most 64
elements is made for real, so code that reads such a tensor back (MONAI's DiceLoss:
`torch.arange(2, ndim).tolist()`) runs under fake tensors.

What the number is. Bytes of tensor storage allocated by PyTorch at the step's peak, the quantity
`torch.cuda.max_memory_allocated` reports (as in shared/ANCHORS.md) — not `max_memory_reserved`,
not nvidia-smi. Not counted, so expect the measured CUDA peak somewhat higher: the caching
allocator's rounding (512 B per block, and up to 1 MiB when a cached block is not split),
cuDNN/cuBLAS workspaces (convolution algorithms may ask for hundreds of MiB), flash/efficient
attention's backward scratch, and anything the caller keeps on the device outside the step
(further batches, a second model).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.distributed._tools.mem_tracker import MemTracker, _RefType
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from profiles.cuda_emulation import CudaLike
from profiles.traffic import OpTraffic

SMALL_CONSTANT_NUMEL = 64  # torch.arange results up to this size are real tensors (read back by .tolist())
NODE_TAG = "profiles.footprint.module"  # autograd node metadata: the module whose forward made it
CATEGORY_NAMES = {"Other": "Input"}  # MemTracker files track_external tensors as "Other": here, the batch


@dataclass
class FootprintConfig:
    """How the step is replayed."""

    cuda_autocast: bool = field(
        default=True, metadata={"help": "autocast casts as on CUDA (else CPU's lists)"}
    )
    cuda_kernels: bool = field(
        default=True, metadata={"help": "SDPA and dropout run the kernels CUDA would pick"}
    )
    module_depth: int = field(default=3, metadata={"help": "module-name depth of `top_modules` (root = 1)"})
    top: int = field(default=12, metadata={"help": "modules listed in `top_modules`"})


@dataclass
class Footprint:
    """Estimated allocated bytes of one training step at its peak, and where they were."""

    peak_bytes: int
    peak_phase: str  # forward | backward | optimizer
    peak_module: str  # innermost module running when the peak was reached
    by_category_bytes: dict[str, int]  # live at the peak: Parameter, Gradient, Activation, Temp, ...
    top_modules: list[tuple[str, int]]  # (module prefix, activation + temp bytes live at the peak)
    by_module_bytes: dict[str, dict[str, int]]  # innermost module -> category -> bytes live at the peak
    notes: list[str] = field(default_factory=list)
    estimate_s: float = 0.0  # wall time of the estimate itself
    # the same step's eager traffic (profiles.traffic): bytes read + written op by op, and op count
    bytes_moved: int = 0
    ops: int = 0
    bytes_moved_by_category: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["top_modules"] = [list(t) for t in self.top_modules]
        return out

    def to_markdown(self) -> str:
        gib = 2**30
        lines = [
            f"**Estimated peak (allocated): {self.peak_bytes / gib:.2f} GiB** in {self.peak_phase} "
            f"(`{self.peak_module}`); estimated in {self.estimate_s:.1f} s on the CPU, not measured.",
            "",
            "| category | GiB at the peak |",
            "|---|---|",
        ]
        for name, size in sorted(self.by_category_bytes.items(), key=lambda kv: -kv[1]):
            if size:
                lines.append(f"| {name} | {size / gib:.3f} |")
        lines += ["", "| module (activations + temps made there) | GiB at the peak |", "|---|---|"]
        lines += [f"| `{name}` | {size / gib:.3f} |" for name, size in self.top_modules]
        if self.bytes_moved:
            lines += [
                "",
                f"Eager traffic: {self.bytes_moved / 1e9:.1f} GB read + written over {self.ops} ops "
                f"({self.bytes_moved / 3.0e12 * 1e3:.1f} ms at 3.0 TB/s).",
                "",
                "| op category | GB moved |",
                "|---|---|",
            ]
            for name, size in sorted(self.bytes_moved_by_category.items(), key=lambda kv: -kv[1]):
                lines.append(f"| {name} | {size / 1e9:.2f} |")
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines)


class _SmallConstants(TorchFunctionMode):
    """`torch.arange` with at most SMALL_CONSTANT_NUMEL elements runs for real (its values are known)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.arange and 1 <= len(args) <= 3 and all(isinstance(a, int) for a in args):
            lo, hi, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], (args[2:] or (1,))[0])
            if step and math.ceil((hi - lo) / step) <= SMALL_CONSTANT_NUMEL:
                with unset_fake_temporarily():
                    return func(*args, **kwargs)
        return func(*args, **kwargs)


class _Tracker(MemTracker):
    """MemTracker that also files each new storage under the module that made it, and remembers,
    at the global peak, the phase, the module running and the live bytes per module.

    The module running: in forward (and in a checkpointed block recomputed during backward), the
    innermost module whose forward is on the stack; in backward, the module whose forward made
    the autograd node being executed. Nodes are tagged in the module hooks: before a module's
    forward, the untagged nodes behind its inputs belong to the caller; after it, the untagged
    nodes behind its outputs are its own (its children tagged theirs already).
    ModTracker's own `parents` set is not used: in backward it keeps modules whose backward hook
    never fired (inputs that need no gradient), so its deepest entry is often a stale one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._owner: dict[int, tuple[str, str, int]] = {}  # id(winfo) -> (module, category, bytes)
        self._live: dict[tuple[str, str], int] = {}
        self._stack: list[str] = []
        self._best = -1
        self.peak_live: dict[tuple[str, str], int] = {}
        self.peak_phase = ""
        self.peak_module = ""

    def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
        if not self._stack and not self._mod_tracker.is_bw and module in self.memory_tracking:
            # The root called again in one step (sliding-window inference: once per window batch).
            # MemTracker refuses a second iteration; its per-module stats are not what this reports
            # (the storages' owners and the peak are tracked above), so they start over.
            self.reset_mod_stats()
        super()._pre_fw_hook(module, inputs)
        _tag_nodes(inputs, self._stack[-1] if self._stack else "(outside modules)")  # the caller made them
        self._stack.append(self._mod_tracker.get_known_fqn(module) or type(module).__name__)

    def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        super()._post_fw_hook(module, inputs, outputs)
        _tag_nodes(outputs, self._stack.pop())  # what is still untagged, this module made itself

    def _module_now(self) -> str:
        if self._in_opt:
            return "(optimizer)"
        if self._stack:
            return self._stack[-1]
        node = torch._C._current_autograd_node()
        if node is not None:
            return node.metadata.get(NODE_TAG, f"(autograd {node.name()})")
        return "(outside modules)"

    def _track(self, reftype: _RefType, t: torch.Tensor) -> None:
        fresh = [st for st in get_untyped_storages(t) if st not in self._WINFO]
        super()._track(reftype, t)
        for st in fresh:
            winfo, _ = self._WINFO[st]
            key = (self._module_now(), str(winfo.reftype.value))
            self._owner[id(winfo)] = (*key, winfo.mem_consumed)
            self._live[key] = self._live.get(key, 0) + winfo.mem_consumed

    def _update_and_maybe_create_winfos(self, t, reftype, update_existing=False):
        # a gradient is made in backward (Temp) and then reclassified by MemTracker's grad hook
        known = [self._WINFO[st][0] for st in get_untyped_storages(t) if st in self._WINFO]
        before = {id(w): w.reftype for w in known}
        winfos = super()._update_and_maybe_create_winfos(t, reftype, update_existing)
        for winfo in winfos:
            owned = self._owner.get(id(winfo))
            if owned is not None and before.get(id(winfo)) not in (None, winfo.reftype):
                module, category, size = owned
                self._live[(module, category)] -= size
                key = (module, str(winfo.reftype.value))
                self._live[key] = self._live.get(key, 0) + size
                self._owner[id(winfo)] = (*key, size)
        return winfos

    def _delete_callback(self, winfo, w_st) -> None:
        owned = self._owner.pop(id(winfo), None)
        if owned is not None:
            module, category, size = owned
            self._live[(module, category)] -= size
        super()._delete_callback(winfo, w_st)

    def _update_peak_stats(self, peak_state) -> None:
        super()._update_peak_stats(peak_state)
        total = sum(self._peak_mem.values())
        if total > self._best:
            self._best = total
            self.peak_live = {k: v for k, v in self._live.items() if v}
            self.peak_phase = (
                "optimizer" if self._in_opt else "backward" if self._mod_tracker.is_bw else "forward"
            )
            self.peak_module = self._module_now()


def _tag_nodes(tensors: Any, name: str) -> None:
    """Tag with `name` the autograd nodes behind `tensors` that no module has tagged yet."""
    todo = [t.grad_fn for t in tree_leaves(tensors) if isinstance(t, torch.Tensor)]
    while todo:
        node = todo.pop()
        if node is None or NODE_TAG in node.metadata:
            continue
        node.metadata[NODE_TAG] = name
        todo.extend(n for n, _ in node.next_functions)


def _fake_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are fake (call inside the FakeTensorMode).

    Replaced entry by entry (not `Module._apply`, which swaps tensors in place and refuses
    parameters that something holds a weak reference to); a tensor shared by two modules stays shared.
    """
    with unset_fake_temporarily():
        clone = copy.deepcopy(model)
    fakes: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in fakes:
            empty = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
            fakes[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
        return fakes[id(t)]

    for module in clone.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None:
                    table[name] = fake(t)
    return clone


def _warm_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One untracked step from zero gradients: the optimizer's lazy state exists, as in steady state."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _prefix(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])


def estimate_step_memory(
    model: nn.Module,
    make_inputs: Callable[[], tuple[torch.Tensor, ...]],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    step: Callable[..., Any],
    config: FootprintConfig | None = None,
) -> Footprint:
    """Estimate the peak allocated bytes of `step(model, optimizer, *make_inputs())`.

    `model` is real and on the CPU (it is copied, never modified). `make_inputs` and
    `make_optimizer` run inside the fake mode (their tensors cost nothing); the inputs count as
    live for the whole step, like a batch already on the device. `step` is one full training
    step: forward under `torch.autocast("cpu", ...)` (CUDA's policy is applied to it), loss,
    backward, optimizer step, gradients set to None.
    """
    config = config or FootprintConfig()
    start = time.perf_counter()
    notes: list[str] = []
    cuda = CudaLike(autocast=config.cuda_autocast, kernels=config.cuda_kernels)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
        with FakeTensorMode(allow_non_fake_inputs=True), _SmallConstants():
            fake = _fake_copy(model)
            optimizer = make_optimizer(fake)
            _warm_optimizer(fake, optimizer)
            inputs = make_inputs()
            tracker = _Tracker()
            tracker.track_external(fake, optimizer, *inputs)
            traffic = OpTraffic()
            with cuda, tracker, traffic:
                step(fake, optimizer, *inputs)
    peak = tracker.get_tracker_snapshot("peak")
    (device_snap,) = peak.values() if peak else ({},)
    by_category = {
        CATEGORY_NAMES.get(str(k.value), str(k.value)): int(v)
        for k, v in device_snap.items()
        if hasattr(k, "value")
    }
    by_module: dict[str, dict[str, int]] = {}
    for (module, category), size in tracker.peak_live.items():
        by_module.setdefault(module, {})[CATEGORY_NAMES.get(category, category)] = size
    grouped: dict[str, int] = {}
    for module, cats in by_module.items():
        made = cats.get("Activation", 0) + cats.get("Temp", 0)
        if made:
            key = _prefix(module, config.module_depth)
            grouped[key] = grouped.get(key, 0) + made
    top = sorted(grouped.items(), key=lambda kv: -kv[1])[: config.top]
    if cuda.policies:
        notes.append(f"autocast: CUDA's op policy ({len(cuda.policies)} AutocastCPU kernels re-registered)")
    if cuda.calls:
        calls = ", ".join(f"{k} ×{n}" for k, n in sorted(cuda.calls.items()))
        notes.append(f"kernels chosen as on CUDA: {calls}")
    return Footprint(
        peak_bytes=int(sum(by_category.values())),
        peak_phase=tracker.peak_phase,
        peak_module=tracker.peak_module,
        by_category_bytes=by_category,
        top_modules=top,
        by_module_bytes=by_module,
        notes=notes,
        estimate_s=time.perf_counter() - start,
        bytes_moved=traffic.traffic.bytes_moved,
        ops=traffic.traffic.ops,
        bytes_moved_by_category=dict(traffic.traffic.by_category_bytes),
    )
