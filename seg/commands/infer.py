"""`segbench infer`: label maps for raw cases, on each case's original grid and label convention."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from seg.infer import InferConfig
    from seg.infer_folder import infer_folder

    # a bad --roi / --overlap / --sw-batch fails here, once, before any work (exit 2, segbench.cli)
    cfg = InferConfig(
        roi=args.roi,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch,
        mode=args.mode,
        tta=args.tta,
        min_et_mm3=args.min_et_mm3,
        precision=args.precision,
        compile_mode=args.compile_mode,
        inductor=tuple(args.inductor),
        channels_last=args.channels_last,
        fused_norm=args.fused_norm,
        fast=args.fast,
        save_probabilities=args.save_probabilities,
    )
    try:
        summary = infer_folder(args.checkpoint, args.src, args.out, cfg, args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"segbench infer: {err}", file=sys.stderr)
        return 1
    return report_cases("infer", summary["cases"], f"predicted into {args.out}")


def report_cases(command: str, rows: list[dict], done: str) -> int:
    """One stderr line per failed case, then the count done; the exit status (1 if any failed)."""
    failed = [row for row in rows if row["status"] != "ok"]
    for row in failed:
        print(f"segbench {command}: {row['error']}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} of {len(rows)} cases {done}")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "infer",
        help="predict label maps for raw cases (sliding window, TTA, checkpoint ensembles)",
        description="Predict every case below --src and write OUT/<case_id>_pred.nii.gz on the case's "
        "original grid (same shape and affine) in its label convention (2021: 0,1,2,4). Several "
        "--checkpoint files are an ensemble (mean of probabilities).",
    )
    p.add_argument(
        "--checkpoint", nargs="+", required=True, help="best.pt / last.pt from segbench train (one or more)"
    )
    p.add_argument("--src", required=True, help="folder with raw BraTS cases (2021 or 2023 names)")
    p.add_argument("--out", required=True, help="output folder for <case_id>_pred.nii.gz and infer.json")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap fraction (default 0.5)")
    p.add_argument(
        "--tta", action="store_true", help="test-time augmentation: mean over the 8 axis-flip combinations"
    )
    p.add_argument(
        "--roi", type=int, help="window edge in voxels (default: training patch, else the prep size)"
    )
    p.add_argument("--sw-batch", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--mode", choices=("gaussian", "constant"), default="gaussian", help="window blending")
    p.add_argument("--min-et-mm3", type=float, default=0.0, metavar="MM3",
                   help="a predicted enhancing tumour smaller than this volume becomes necrotic core "
                        "(BraTS scores a false ET in a case without one as Dice 0); default 0: off")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto: bf16 on CUDA, else fp32",
    )
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write OUT/<case_id>_probs.pt (mean probabilities on the prepared grid, "
                   "float32) for `segbench ensemble` across infer runs")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    add_speed_options(p)
    p.set_defaults(func=run)


def add_speed_options(p: argparse.ArgumentParser) -> None:
    """The speed switches `segbench bench` measures (compile[:MODE], channels_last, fused_norm,
    swin_fast), applied after the checkpoint's weights are loaded; predictions stay the same."""
    from seg.speed import COMPILE_MODES  # standard library only

    p.add_argument(
        "--compile", dest="compile_mode", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
        help=f"torch.compile the models; MODE: {', '.join(COMPILE_MODES)} ('default' when omitted)",
    )
    p.add_argument(
        "--inductor", action="append", default=[], metavar="NAME=VALUE",
        help="a torch._inductor.config option for --compile, repeatable (e.g. triton.mix_order_reduction=0)",
    )
    p.add_argument("--channels-last", action="store_true", help="models and volumes in channels_last_3d")
    p.add_argument(
        "--fused-norm", action="store_true",
        help="Triton fused InstanceNorm+activation and LayerNorm (kernels.patch); needs Triton on CUDA "
        "(interpreted on a CPU under TRITON_INTERPRET=1: tests, slowly)",
    )
    p.add_argument(
        "--fast", action="store_true",
        help="SwinUNETR checkpoints through the weight-compatible fast path (seg.swin_fast)",
    )
