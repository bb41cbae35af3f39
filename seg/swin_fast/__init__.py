"""A drop-in, weight-compatible fast path for MONAI's SwinUNETR (issue 7).

    model = seg.models.build("swinunetr", preset="seed", fast=True, use_checkpoint=False)
    # or, on any MONAI SwinUNETR (e.g. one loaded from a MONAI checkpoint):
    model = seg.swin_fast.to_fast(model, fused_norm="auto")

The model keeps MONAI's classes as bases, its parameters and its state_dict keys, and computes the
same function (outputs and gradients equal MONAI's in fp32; train-mode dropout has MONAI's rates):
- window attention through F.scaled_dot_product_attention; the relative-position bias and the
  shift mask become one additive bias per window group, cached (attention.py);
- pad + roll + window partition, and the way back, are one gather each (index maps cached per
  shape, built in-graph under torch.compile) (windows.py);
- tokens stay channels-last between Swin stages (blocks.py);
- no graph breaks under torch.compile; optional Triton LayerNorm + fused decoder norms (convert.py).

Activation memory (training, no checkpointing): MONAI materializes each window attention's
scores (windows*heads*N*N, N=343) about six times (q@k, +bias, +mask, softmax, dropout mask and
output); at 128^3 feature 24 that is ~1.4 GB per fp32 copy in stage 1 alone. SDPA saves only its
output and log-sum-exp, and the biases here are heads*N*N per group, so the saved Swin activations
are per-token tensors (about 20 x C floats per token per block with the MLP's 4C) and the peak
moves to the full-resolution decoder convolutions. Backward of the memory-efficient kernel still
writes a transient full-size bias gradient (rows*heads*N*N, e.g. ~0.5 GB bf16 for stage 1 at 128^3)
before reducing it to the table; `profiles/memory.py` records where the peak actually is.
"""

from .convert import is_fast, kernels_status, to_fast

__all__ = ["to_fast", "is_fast", "kernels_status"]
