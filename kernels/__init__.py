"""kernels: Triton kernels (fused normalization) with their PyTorch references."""
