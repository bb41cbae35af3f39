"""kernels: Triton kernels (fused normalization) with their PyTorch references.

Public API: `fused_norm_act`, `layer_norm`, `patch`, `unpatch`, `available`.
Each op runs as two custom operators (`torch.ops.segbench.fused_norm_act_fwd/_bwd`,
`torch.ops.segbench.layer_norm_fwd/_bwd`, registered on import) with fake versions and autograd, so
torch.compile(fullgraph=True) captures models using them whole, with no graph break. Gradients are
first order (training): the backward ops have no autograd of their own, so a double backward
(gradgradcheck, gradient penalties) raises PyTorch's "no autograd formula" error. float64 runs the
PyTorch reference (the kernels compute in float32), so gradcheck holds.
Imports only torch (and triton, lazily: the kernels are defined on first use, so TRITON_INTERPRET=1
set before the first kernel call selects Triton's CPU interpreter).
"""

from .fused_norm_act import fused_norm_act
from .layer_norm import layer_norm
from .patch import patch, patched_modules, unpatch
from .runtime import available

__all__ = ["available", "fused_norm_act", "layer_norm", "patch", "patched_modules", "unpatch"]
