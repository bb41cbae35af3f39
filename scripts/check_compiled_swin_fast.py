"""Open problem (session 2): on this CPU, `segbench train --model swinunetr --fast --compile
--precision bf16` (inductor) turns NaN at the second step, every time; the same with fp32, or
eager bf16, trains normally. This script replays it with the harness's own step (seg.recipe:
DiceCE, fused AdamW, bf16 autocast) for a few steps and reports losses and non-finite gradients,
for --stock (MONAI) or the fast path, on any device and backend. On CUDA the swin-goal row
bf16+swin_fast+compile answers the same question (its parity column and non-finite-loss warning).
Not reproduced yet by this script (3 steps finite with random input and with a prepared case):
the difference to `segbench train` (augmented batches from the loader, the warm-up scheduler,
validation between epochs) is the next thing to bisect. Stock + compile bf16 trains normally.

    python scripts/check_compiled_swin_fast.py [--stock] [--device cuda] [--backend aot_eager]
        [--precision bf16|fp32] [--steps 3] [--size 64] [--feature 12]

Exit status 1 when a loss or gradient is non-finite. ~2 min on a 2-core CPU (the compile).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--feature", type=int, default=12)
    p.add_argument("--stock", action="store_true", help="stock MONAI instead of the fast path")
    p.add_argument("--data", help="a prepared folder: train on its first case (default: random input)")
    p.add_argument("--zero-lr-first", action="store_true",
                   help="first step at lr 0, as the warm-up schedule of segbench train starts")
    args = p.parse_args()

    from seg import recipe
    from seg.models import build

    torch.manual_seed(0)
    model = build(
        "swinunetr", preset="seed", fast=not args.stock, use_checkpoint=False, feature_size=args.feature
    ).to(args.device)
    compiled = torch.compile(model, backend=args.backend)
    loss_fn, optimizer = recipe.build_loss(), recipe.build_optimizer(model, lr=1e-4)
    scaler = recipe.make_scaler(args.precision, torch.device(args.device).type)
    if args.data:
        from pathlib import Path

        from seg.data.store import load_case

        case = load_case(sorted(Path(args.data).glob("*.pt"))[0])
        x, y = case["image"][None].float().to(args.device), case["label"][None].long().to(args.device)
    else:
        x = torch.randn(1, 4, args.size, args.size, args.size, device=args.device)
        y = torch.randint(0, 4, (1, 1, args.size, args.size, args.size), device=args.device)
    bad: list[str] = []
    for step in range(args.steps):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = 0.0 if (args.zero_lr_first and step == 0) else 1e-4
        loss = recipe.forward_backward(compiled, x, y, loss_fn, scaler, args.precision)
        grads = [(n, q.grad) for n, q in model.named_parameters() if q.grad is not None]
        bad = [n for n, g in grads if not torch.isfinite(g).all()]
        recipe.optimizer_step(optimizer, scaler)
        print(f"step {step}: loss {float(loss):.4f}, {time.perf_counter() - start:.1f} s, "
              f"non-finite gradients: {len(bad)} {bad[:4]}")
        if bad or not math.isfinite(float(loss)):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
