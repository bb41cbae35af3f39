"""A drop-in, weight-compatible fast path for MONAI's SwinUNETR (issue 7).

    model = seg.models.build("swinunetr", preset="seed", fast=True, use_checkpoint=False)
    # or, on any MONAI SwinUNETR (e.g. one loaded from a MONAI checkpoint):
    model = seg.swin_fast.to_fast(model, fused_norm="auto")

The model keeps MONAI's classes as bases, its parameters and its state_dict keys, and computes the
same function (outputs and gradients equal MONAI's to 1e-10 in float64, outputs to ~1e-6 in float32;
train-mode dropout has MONAI's rates, drawn by SDPA for the attention):
- window attention through F.scaled_dot_product_attention; the relative-position bias and the
  shift mask become one additive bias per window group, cached for inference inside
  `cached_biases(model)` (seg.infer's sliding window uses it) (attention.py);
- pad + roll + window partition, and the way back, are one gather each (index maps cached per
  shape; graph constants under torch.compile) (windows.py);
- tokens stay channels-last between Swin stages (blocks.py);
- no graph breaks under torch.compile with a static spatial shape (the batch may be symbolic, as after
  automatic dynamic meets a smaller last batch; a symbolic spatial size breaks the graph at each
  block's geometry; seg.speed.compile_model compiles with dynamic=False); optional Triton LayerNorm
  + fused decoder norms (convert.py);
- the conv blocks' LeakyReLUs out of place (in place on InstanceNorm's view output, autograd copies
  the whole gradient in backward).

Activation memory (training, bf16, no checkpointing, 128^3, feature 24, batch 1). MONAI keeps each
window attention's scores (windows*heads*343*343, ~0.35 G elements in stage 1) several times over
(q@k, +bias, +mask, softmax, dropout mask and output; fp32 where the table's bias promotes them):
that is most of stock's 10.2 GiB. SDPA saves only q, k, v, its output and a log-sum-exp, and the
biases here are heads*N*N per group, so a stage-1 block keeps ~0.27 GB (per token: LayerNorm
inputs, window rows, q/k/v, the MLP's 4C hidden and dropout masks) and the whole Swin encoder
~0.75 GB. The peak then sits in the full-resolution conv blocks (encoder1/decoder1, 24-48
channels at 128^3: ~1.5 GB saved) plus weights, grads and AdamW state (~0.25 GB); in backward the
memory-efficient kernel writes a full (rows, heads, N, N) bias gradient before reducing it to the
table (~0.5 GB bf16 for stage 1's interior group). The footprint estimate (`segbench bench --suite
footprint`, CPU fake tensors with CUDA's kernel choices; 2-19 % under ANCHORS' measured stock
peaks) puts the peak at 3.14 GiB, reached at the end of the forward, in decoder1 (stock: 9.38
estimated, 10.24 measured); feature 48: 6.25 GiB; with the Triton norms 2.82 / 5.61 GiB. Inside
the seed's 8 GB card; recomputing encoder1 in backward (seg.recompute, variant ckpt:encoder1)
takes 0.6 / 1.2 GiB off. Its eager step moves 34 GB over ~1.4k ops (stock: 119 GB;
profiles.traffic), 11.4 ms at 3 TB/s;
`python -m seg.swin_fast.gpu_check` records the real one with `profiles.memory`.
"""

import torch.nn as nn

from .attention import cached_biases
from .convert import is_fast, kernels_status, to_fast

__all__ = ["to_fast", "is_fast", "kernels_status", "clear_caches", "cached_biases"]


def clear_caches(model: nn.Module) -> None:
    """Forget the fast path's cached index maps and inference biases (to free their memory, or after
    editing a relative-position table through `.data` inside `cached_biases`)."""
    from .attention import FastWindowAttention
    from .windows import cached_geometry

    for module in model.modules():
        if isinstance(module, FastWindowAttention):
            module.clear_caches()
    cached_geometry.cache_clear()
