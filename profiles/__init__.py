"""profiles: NVTX ranges, torch.profiler capture, nsys capture ranges, trace summaries, CUDA memory
snapshots, and GPU-free peak-memory estimates of a training step (footprint)."""
