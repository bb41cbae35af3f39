"""The fast SwinUNETR's window attention: SDPA (what the fast path runs) vs kernels.window_attention.

    python -m kernels.bench_window_attention [--feature 24] [--size 128] [--out DIR] [--sweep]

For each stage's interior window group of a batch-1 training step (stage 1 of a 128³ input: 729
windows × 3 heads × 343 tokens × head dim 8), bf16, bias = one (heads, N, N) tensor that needs a
gradient, dropout as the seed recipe (0.2): forward and forward + backward times (median of
triton.testing.do_bench), the fewest bytes each must move and the GB/s that makes, and parity —
both against a float32 reference with dropout off (outputs and all four gradients; ‖a − ref‖ / ‖ref‖).
SDPA picks its kernel as in training (the memory-efficient one: cuDNN's refuses a bias that needs a
gradient). Writes DIR/window_attention.json and prints a table. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .window_attention import window_attention

DROPOUT_P = 0.2


def stage_shapes(feature: int, size: int) -> list[dict]:
    """(rows, heads, tokens, head dim) of each Swin stage's interior window group, batch 1, window 7."""
    shapes = []
    for stage, heads in enumerate((3, 6, 12, 24)):
        side = size // 2 ** (stage + 1)  # patch embedding halves, then each stage
        window = min(7, side)
        per_axis = -(-side // window)
        rows = max(per_axis - 1, 1) ** 3 if per_axis > 1 else 1
        shapes.append(dict(stage=stage + 1, rows=rows, heads=heads, tokens=window**3,
                           head_dim=feature * 2**stage // heads))
    return shapes


BIAS_ALIGN = 16  # as the fast path stores its biases (seg.swin_fast.windows): rows padded to 16 elements,
# so SDPA's memory-efficient kernel takes the mask as is instead of copying it into an aligned buffer


def _inputs(rows, heads, tokens, head_dim, dtype, seed=0, device="cuda"):
    """q, k, v as views of one (rows, N, 3, heads, d) projection; bias an aligned (heads, N, N) view."""
    g = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(rows, tokens, 3, heads, head_dim, device=device, generator=g).to(dtype)
    q, k, v = (t.detach().requires_grad_() for t in qkv.permute(2, 0, 3, 1, 4).unbind(0))
    padded = -(-tokens // BIAS_ALIGN) * BIAS_ALIGN
    storage = torch.randn(heads, tokens, padded, device=device, generator=g).to(dtype)
    bias = storage[:, :, :tokens].requires_grad_()
    return q, k, v, bias


def _sdpa(q, k, v, bias, p, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None], dropout_p=p, scale=scale)


def _triton(q, k, v, bias, p, scale):
    return window_attention(q, k, v, bias, p, scale=scale)


IMPLS = {"sdpa": _sdpa, "triton": _triton}


def parity(fn, shape: dict, dtype: torch.dtype = torch.bfloat16, device: str = "cuda") -> dict:
    """Relative error of out and grads (dropout off) against float32 SDPA math."""
    args = _inputs(shape["rows"], shape["heads"], shape["tokens"], shape["head_dim"], dtype, 1, device)
    scale = shape["head_dim"] ** -0.5
    out = fn(*args, 0.0, scale)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_args = [t.detach().float().requires_grad_() for t in args]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        ref = _sdpa(*ref_args, 0.0, scale)
    ref.backward(grad.float())

    def rel(a, b):
        return ((a.float() - b).norm() / b.norm()).item()

    out_rel = rel(out, ref)
    names = ("dq", "dk", "dv", "dbias")
    return {"out": out_rel, **{n: rel(t.grad, r.grad) for n, t, r in zip(names, args, ref_args, strict=True)}}


def _bytes(shape: dict, backward: bool) -> int:
    """Fewest bytes, bf16: read q, k, v, bias, write out; backward also reads q, k, v, out, dout, bias
    and writes dq, dk, dv, dbias."""
    qkvo = shape["rows"] * shape["heads"] * shape["tokens"] * shape["head_dim"] * 2
    bias = shape["heads"] * shape["tokens"] ** 2 * 2
    return 4 * qkvo + bias + (8 * qkvo + 2 * bias if backward else 0)


def _time(fn, shape: dict) -> dict:
    from triton.testing import do_bench

    args = _inputs(shape["rows"], shape["heads"], shape["tokens"], shape["head_dim"], torch.bfloat16)
    scale = shape["head_dim"] ** -0.5
    grad = torch.randn_like(fn(*args, DROPOUT_P, scale))

    def fwd():  # the training forward (grad on): without it SDPA may pick another kernel and skip its
        fn(*args, DROPOUT_P, scale)  # log-sum-exp, which the Triton forward always writes

    def fwd_bwd():
        for t in args:
            t.grad = None
        fn(*args, DROPOUT_P, scale).backward(grad)

    fwd_ms = do_bench(fwd, warmup=25, rep=100, return_mode="median")
    fwd_bwd_ms = do_bench(fwd_bwd, warmup=25, rep=200, return_mode="median")
    return {"fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms, "fwd_gb_per_s": _bytes(shape, False) / fwd_ms / 1e6,
            "fwd_bwd_gb_per_s": _bytes(shape, True) / fwd_bwd_ms / 1e6}


def bench_shape(shape: dict) -> list[dict]:
    rows = []
    for name, fn in IMPLS.items():
        row = {**shape, "impl": name, "dropout_p": DROPOUT_P}
        try:
            row.update(_time(fn, shape))
            row["parity_vs_fp32"] = parity(fn, shape)
        except Exception as err:  # one implementation failing must not hide the other's numbers
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


# Tile sets tried by --sweep (kernels.window_attention.CONFIGS is "default"): (BLOCK_M, BLOCK_N, warps).
TILE_SETS = {
    "warps4": {"fwd": (64, 32, 4), "dkdv": (32, 64, 4), "dq": (64, 32, 4), "dbias": (64, 32, 4)},
    # square64's fwd spills 16 B on sm_90 with triton 3.6 (255 registers, no dropout; none with 3.9)
    "square64": {"fwd": (64, 64, 8), "dkdv": (64, 64, 8), "dq": (64, 64, 8), "dbias": (64, 64, 8)},
    "small32": {"fwd": (32, 32, 4), "dkdv": (32, 32, 4), "dq": (32, 32, 4), "dbias": (32, 32, 4)},
}


def sweep(shape: dict) -> list[dict]:
    """The Triton kernels at each tile set of TILE_SETS, on one shape (time and parity per set)."""
    from . import window_attention as wa

    default = dict(wa.CONFIGS)
    rows = []
    try:
        for name, tiles in TILE_SETS.items():
            wa.CONFIGS.update(tiles)
            row = {**shape, "impl": f"triton[{name}]", "dropout_p": DROPOUT_P, "tiles": tiles}
            try:
                row.update(_time(_triton, shape))
                row["parity_vs_fp32"] = parity(_triton, shape)
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {err}"[:300]
            rows.append(row)
    finally:
        wa.CONFIGS.update(default)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature", type=int, default=24, help="SwinUNETR feature_size (24 seed, 48 paper)")
    parser.add_argument("--size", type=int, default=128, help="input side (voxels)")
    parser.add_argument("--stages", type=int, default=2, help="how many stages, from the first")
    parser.add_argument("--out", type=Path, help="folder for window_attention.json")
    parser.add_argument("--sweep", action="store_true", help="also time the Triton TILE_SETS (stage 1)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels.bench_window_attention needs a CUDA device")
        return 2
    results = []
    for shape in stage_shapes(args.feature, args.size)[: args.stages]:
        results += bench_shape(shape)
        if args.out:  # after every stage: a later failure loses nothing
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "window_attention.json").write_text(json.dumps(results, indent=1))
    if args.sweep:
        results += sweep(stage_shapes(args.feature, args.size)[0])
        if args.out:
            (args.out / "window_attention.json").write_text(json.dumps(results, indent=1))
    print(f"{'stage':>5} {'impl':>16} {'rows×heads×N×d':>18} {'fwd ms':>8} {'fwd+bwd ms':>10} {'GB/s':>7}  "
          "parity (worst of out, grads)")
    for r in results:
        dims = f"{r['rows']}×{r['heads']}×{r['tokens']}×{r['head_dim']}"
        if "error" in r:
            print(f"{r['stage']:>5} {r['impl']:>16} {dims:>18}  {r['error']}")
            continue
        worst = max(r["parity_vs_fp32"].values())
        print(f"{r['stage']:>5} {r['impl']:>16} {dims:>18} {r['fwd_ms']:8.3f} {r['fwd_bwd_ms']:10.3f} "
              f"{r['fwd_bwd_gb_per_s']:7.0f}  {worst:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
