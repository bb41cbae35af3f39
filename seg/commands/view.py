"""`segbench view`: the 4-pane slice viewer (T1, T1ce, T2, FLAIR with the label overlay)."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    headless = args.save is not None
    try:
        if not headless:
            import matplotlib

            if matplotlib.get_backend().lower() in ("agg", "pdf", "svg", "ps", "cairo", "template"):
                print("segbench view: no interactive display here; use --save FILE.png", file=sys.stderr)
                return 1
        from seg.viz import SliceViewer, load_volume

        viewer = SliceViewer(load_volume(args.case, args.pred), args.slice, headless=headless)
        if headless:
            print(f"wrote {viewer.save(args.save)}")
    except (FileNotFoundError, ValueError) as err:
        print(f"segbench view: {err}", file=sys.stderr)
        return 1
    if not headless:
        import matplotlib.pyplot as plt

        plt.show()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "view",
        help="4-pane slice viewer: T1, T1ce, T2, FLAIR with the segmentation overlay",
        description="Show a case's four modalities (axial slices) with its label map overlaid; the mouse "
        "wheel or the up/down keys move through slices. --save renders one slice to a file without a "
        "display. Slices are drawn in the neurological convention (patient left on the left; marked L/R, "
        "A/P), the mirror of the radiological one.",
    )
    p.add_argument("case", help="a raw case folder (BraTS 2021 or 2023 names) or a prepared .pt file")
    p.add_argument("--save", metavar="FILE", help="write the view to this file (.png, .pdf, .svg or .jpg; "
                   "headless) instead of a window")
    p.add_argument("--slice", type=int, help="axial slice index (default: the slice with the most tumour)")
    p.add_argument("--pred", help="a predicted label map on the case's grid (NIfTI; .pt for prepared cases)")
    p.set_defaults(func=run)
