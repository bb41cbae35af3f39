"""profiles: NVTX ranges, torch.profiler capture, nsys capture ranges, trace summaries."""
