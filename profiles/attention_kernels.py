"""Which kernel `scaled_dot_product_attention` picked, call by call: `count_attention_kernels(fn)`.

SDPA chooses its backend at every call from the device, dtypes, shapes, the mask and whether it
needs a gradient (flash takes no mask; cuDNN, preferred on Hopper by recent PyTorch, takes no mask
that needs a gradient; the memory-efficient kernel takes both; else the math composite). The
choice decides time and memory, and a flag such as MONAI's `use_flash_attention` does not say which
kernel runs. This records it: a TorchFunctionMode counts the SDPA calls, a TorchDispatchMode sees
the fused kernel each call lowered to; a call that reached none of them ran the math composite
(matmul, softmax, dropout as separate ops).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# forward op name (OpOverloadPacket name) -> backend name
FUSED_FORWARD = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


class _Calls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class _Kernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.kernels: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        backend = FUSED_FORWARD.get(func.overloadpacket.__name__)
        if backend is not None:
            self.kernels[backend] += 1
        return func(*args, **(kwargs or {}))


def count_attention_kernels(fn: Callable[[], object]) -> dict[str, int]:
    """Run `fn` once (eagerly: compiled code is opaque to the modes) and return how many SDPA calls
    went to each backend, e.g. {"efficient": 24}; "math" for calls that reached no fused kernel.
    Empty when `fn` made no SDPA call (attention written out as matmul + softmax, or none)."""
    calls, kernels = _Calls(), _Kernels()
    with calls, kernels:
        fn()
    counts = dict(kernels.kernels)
    math_calls = calls.calls - sum(counts.values())
    if math_calls > 0:
        counts["math"] = math_calls
    return dict(sorted(counts.items()))



def sdpa_priority_order(device: str) -> list[str] | None:
    """The order in which SDPA tries its kernels on `device`, e.g. ["cudnn", "flash", "efficient",
    "math"] (recent PyTorch puts cuDNN first on Hopper). PyTorch settles the order at the first SDPA
    call, so one tiny call runs first. None where this PyTorch does not expose the order."""
    from torch.nn.attention import SDPBackend

    if not hasattr(torch._C, "_get_sdp_priority_order"):
        return None
    q = torch.zeros(1, 1, 8, 8, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
    F.scaled_dot_product_attention(q, q, q)
    names = {int(value): name.lower() for name, value in SDPBackend.__members__.items()}
    short = {"flash_attention": "flash", "efficient_attention": "efficient", "cudnn_attention": "cudnn"}
    order = [names.get(int(b), str(b)) for b in torch._C._get_sdp_priority_order()]
    return [short.get(name, name) for name in order]
