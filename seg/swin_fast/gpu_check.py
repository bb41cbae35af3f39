"""The GPU check of the fast SwinUNETR path, as one short script (issue 7).

    python -m seg.swin_fast.gpu_check --out runs/swin_fast_gpu [--compile] [--feature 24]

What the harness (`segbench bench --suite swinunetr`) does not measure, in order of importance,
each step written to OUT/gpu_check.json the moment it finishes (a later failure loses nothing):
1. sdpa: which scaled_dot_product_attention backends run the stage-1 window attention (bf16,
   per-group bias that needs a gradient, dropout 0.2) forward+backward, and how fast;
2. parity: fast vs stock with the same weights, fp32 (TF32 off) and bf16 autocast vs fp32 stock;
3. step: s/iter and peak memory of the seed recipe's step (seg.recipe.train_step) without
   checkpointing, stock bf16 vs fast bf16 eager (and fast + torch.compile with --compile);
4. memory: a CUDA memory snapshot of two fast bf16 steps (OUT/swin_fast_memory.pickle) and the
   summary of what is live at the peak, by category and source line (profiles.memory).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from pathlib import Path

import torch

from seg.data.store import write_json


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn, device: str, iters: int = 10) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000 / iters


def check_sdpa(size: int, feature: int, device: str = "cuda") -> dict:
    """Stage-1 interior group of a shifted block: (windows, heads, 343, d) and a (1, heads, N, N) bias.

    "train" is the fast path's training call (bias that needs a gradient, dropout 0.2, forward and
    backward): flash takes no bias and cuDNN no bias gradient (nor a dropout that is not a multiple of
    1/16), so only the efficient and math kernels can run it — the check confirms which one torch
    picks and times them. "inference" is sliding-window prediction (frozen bias, no dropout, forward
    only), where cuDNN may run. A backend that cannot run a call records torch's reasons."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .windows import padded_tokens

    heads, n = 3, 343
    windows = (-(-(size // 2) // 7) - 1) ** 3
    shape = (windows, heads, n, feature // heads)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(3))
    table = torch.randn(heads, n, padded_tokens(n), device=device, dtype=torch.bfloat16)

    def call(backends: list, train: bool) -> None:
        inputs = [t.detach().requires_grad_(train) for t in (q, k, v, table)]
        with sdpa_kernel(backends), torch.set_grad_enabled(train):
            out = torch.nn.functional.scaled_dot_product_attention(
                *inputs[:3], attn_mask=inputs[3][None, :, :, :n], dropout_p=0.2 if train else 0.0, scale=0.35
            )
            if train:
                out.sum().backward()

    results: dict = {"windows": windows, "heads": heads, "tokens": n}
    every = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    train_backends = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    for mode, backends in (("train", train_backends), ("inference", every)):
        for backend in [*backends, None]:  # None: torch's own choice among all of them
            name = f"{mode}_{'default' if backend is None else backend.name}"
            chosen = every if backend is None else [backend]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # torch says why a backend refused in warnings
                try:
                    ms = _time_ms(lambda c=chosen, t=mode == "train": call(c, t), device)
                    results[name] = {"ok": True, "ms": round(ms, 3)}
                except RuntimeError as e:
                    reasons = [str(w.message).splitlines()[0][:200] for w in caught][:4]
                    results[name] = {"ok": False, "error": str(e).splitlines()[0][:200], "reasons": reasons}
    return results


def _models(feature: int, dropout: float, device: str):
    from monai.networks.nets import SwinUNETR

    from .convert import to_fast

    torch.manual_seed(0)
    rates = dict(drop_rate=dropout, attn_drop_rate=dropout, dropout_path_rate=dropout)
    stock = SwinUNETR(4, 4, feature_size=feature, use_checkpoint=False, **rates).to(device)
    fast = to_fast(copy.deepcopy(stock), fused_norm=False)
    return stock.train(), fast.train()


def check_parity(size: int, feature: int, device: str = "cuda") -> dict:
    from seg.recipe import autocast

    stock, fast = _models(feature, 0.0, device)
    x = torch.randn(1, 4, size, size, size, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:  # restored whatever happens: main() goes on to the timed checks after a failure here
        with torch.no_grad():
            ref = stock(x)

            def rel(y: torch.Tensor) -> float:
                return ((y.float() - ref).norm() / ref.norm()).item()

            fp32 = rel(fast(x))
            with autocast("bf16", torch.device(device).type):
                bf16_fast, bf16_stock = rel(fast(x)), rel(stock(x))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {
        "fast_fp32_vs_stock_fp32": fp32,
        "fast_bf16_vs_stock_fp32": bf16_fast,
        "stock_bf16_vs_stock_fp32": bf16_stock,
    }


def _step_fn(model, size: int, device: str):
    from seg.recipe import build_loss, build_optimizer, make_scaler, train_step

    x = torch.randn(1, 4, size, size, size, device=device)
    y = torch.randint(0, 4, (1, 1, size, size, size), device=device)
    loss_fn, optimizer, scaler = build_loss(), build_optimizer(model), make_scaler("bf16", device)
    return lambda: train_step(model, x, y, loss_fn, optimizer, scaler, "bf16")


def check_step(size: int, feature: int, compile_fast: bool, device: str = "cuda", iters: int = 15) -> dict:
    def build(which: int):  # the seed recipe's dropout, no checkpointing; the same weights every time
        return lambda: _models(feature, 0.2, device)[which]

    factories = {"stock_bf16": build(0), "fast_bf16": build(1)}
    if compile_fast:
        factories["fast_bf16_compile"] = lambda: torch.compile(build(1)())
    results = {}
    for name, factory in factories.items():
        # one model on the device at a time, built here: the peak is this model's step alone
        if device == "cuda":
            torch.cuda.empty_cache()
        step = _step_fn(factory(), size, device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        first = time.perf_counter() - t0
        for _ in range(3):
            step()
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t0)
        results[name] = {"s_per_iter": round(statistics.median(times), 5), "first_step_s": round(first, 2)}
        if device == "cuda":
            results[name]["peak_bytes"] = torch.cuda.max_memory_allocated()
        print(name, results[name], flush=True)
        del step  # frees this model and its optimizer state before the next one is built
    return results


def check_memory(size: int, feature: int, out: Path) -> dict:
    from profiles.memory import format_summary, record_memory_history, summarize_snapshot

    stock, fast = _models(feature, 0.2, "cuda")
    del stock  # not part of the fast step's memory
    torch.cuda.empty_cache()
    step = _step_fn(fast, size, "cuda")
    step()
    with record_memory_history(out / "swin_fast_memory.pickle") as rec:
        step()
        step()
    summary = summarize_snapshot(rec.snapshot, rec.baseline_bytes)
    (out / "swin_fast_memory.txt").write_text(format_summary(summary) + "\n")
    print(format_summary(summary), flush=True)
    return {
        "peak_bytes": rec.peak_bytes,
        "replayed_peak_bytes": summary.peak_bytes,
        "by_category": summary.by_category,
        "top_sites": summary.top_sites[:10],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg.swin_fast.gpu_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder for gpu_check.json and the snapshot"
    )
    parser.add_argument("--size", type=int, default=128, help="cubic input size (divisible by 32)")
    parser.add_argument("--feature", type=int, default=24, help="SwinUNETR feature_size (24 seed, 48 paper)")
    parser.add_argument(
        "--compile", action="store_true", help="also time fast + torch.compile (adds minutes)"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.exit(1, "gpu_check needs a CUDA device; this machine has none\n")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "size": args.size,
        "feature": args.feature,
    }
    checks = (
        ("sdpa", lambda: check_sdpa(args.size, args.feature)),
        ("parity", lambda: check_parity(args.size, args.feature)),
        ("step", lambda: check_step(args.size, args.feature, args.compile)),
        ("memory", lambda: check_memory(args.size, args.feature, args.out)),
    )
    for name, run in checks:
        print(f"== {name}", flush=True)
        try:
            results[name] = run()
        except Exception as e:  # one failed check must not cost the others their results
            results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(results[name]["error"], flush=True)
        write_json(Path(args.out) / "gpu_check.json", results)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
