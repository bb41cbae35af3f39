"""seg.swin_fast.gpu_check runs only on a lent GPU; its SDPA check's bookkeeping is checked here on CPU."""

from __future__ import annotations

import torch

from seg.swin_fast import gpu_check


def test_sdpa_check_times_the_runnable_backends_and_records_why_others_refuse(monkeypatch):
    calls = []

    def once(fn, device, iters=10):
        calls.append(device)
        fn()
        return 1.5

    monkeypatch.setattr(gpu_check, "_time_ms", once)
    results = gpu_check.check_sdpa(32, 24, device="cpu")
    assert results["windows"] == 8 and results["tokens"] == 343
    # training: flash and cuDNN cannot take a bias that needs a gradient, so they are not tried
    assert not any(k.startswith("train_") and ("FLASH" in k or "CUDNN" in k) for k in results)
    for name in ("train_MATH", "train_default", "inference_MATH", "inference_default"):
        assert results[name] == {"ok": True, "ms": 1.5}
    refused = results["inference_CUDNN_ATTENTION"]  # no cuDNN attention on a CPU
    assert refused["ok"] is False and refused["error"] and isinstance(refused["reasons"], list)
    assert len(calls) == 7


def test_sdpa_check_backward_reaches_the_bias(monkeypatch):
    grads = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        out = real_sdpa(q, k, v, attn_mask=attn_mask, **kw)
        if attn_mask.requires_grad:
            attn_mask.register_hook(lambda g: grads.append(g.abs().sum().item()))
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(gpu_check, "_time_ms", lambda fn, device, iters=10: (fn(), 1.0)[1])
    gpu_check.check_sdpa(32, 24, device="cpu")
    assert len(grads) == 2 and all(g > 0 for g in grads)  # train_MATH and train_default: a bias gradient
