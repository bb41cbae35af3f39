"""A Markdown summary of a prepared folder: what was prepared, what failed and why, and what
the files hold (shapes, dtypes, value ranges, label fractions, bytes on disk)."""

from __future__ import annotations

import json
from pathlib import Path

from seg.data.store import MANIFEST


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def summarize(prepared_dir: str | Path) -> str:
    """Markdown text for `prepared_dir` (a `segbench data prep --out` folder)."""
    import torch

    from seg.data.splits import SPLITS
    from seg.data.store import load_case

    root = Path(prepared_dir)
    if not (root / MANIFEST).is_file():
        index = root / "index.json"  # seg.data.mmap_store's
        if index.is_file():
            source = json.loads(index.read_text()).get("source", "?")
            raise ValueError(f"{root} is a packed (mmap) folder: summarize the prepared folder it was packed "
                             f"from ({source})")
        raise ValueError(f"{root}: no {MANIFEST} (not a `segbench data prep` or `data convert` folder)")
    manifest = json.loads((root / MANIFEST).read_text())
    cases = manifest["cases"]
    ok = [e for e in cases if e["status"] == "ok"]
    failed = [e for e in cases if e["status"] != "ok"]
    cfg = manifest["config"]
    lines = [
        f"# Prepared data: `{root}`",
        "",
        f"- source: `{manifest.get('source', '?')}`",
        "- config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()),
        f"- cases: {len(ok)} ok, {len(failed)} failed",
    ]
    rows, total_bytes, label_counts = [], 0, torch.zeros(4, dtype=torch.float64)
    unreadable = []  # listed at the end: the summary is where a broken file should show
    for e in ok:
        path = root / e["file"]
        try:
            n_bytes = path.stat().st_size
            case = load_case(path, mmap=True)
        except (OSError, ValueError) as err:
            unreadable.append(f"- **{e['id']}**: {err}")
            continue
        total_bytes += n_bytes
        img = case["image"]
        lab = case.get("label")
        if lab is not None:
            counts = torch.bincount(lab.reshape(-1).long(), minlength=4)[:4].double()
            label_counts += counts
            frac = " / ".join(f"{v:.4f}" for v in (counts / counts.sum()).tolist())
            lab_txt = f"`{tuple(lab.shape)}` {str(lab.dtype).replace('torch.', '')}"
        else:
            frac, lab_txt = "-", "(image only)"
        img_txt = f"`{tuple(img.shape)}` {str(img.dtype).replace('torch.', '')}"
        rows.append(f"| {e['id']} | {case['meta']['convention']} | {img_txt} "
                    f"| {float(img.min()):.3f}..{float(img.max()):.3f} | {lab_txt} | {frac} "
                    f"| {_mib(n_bytes)} |")
    lines.append(f"- bytes on disk (.pt): {_mib(total_bytes)} ({total_bytes} bytes)")
    if label_counts.sum() > 0:
        frac = " / ".join(f"{v:.4f}" for v in (label_counts / label_counts.sum()).tolist())
        lines.append(f"- label voxel fractions (0 bg / 1 core / 2 edema / 3 enhancing): {frac}")
    splits_path = root / SPLITS
    if splits_path.exists():
        s = json.loads(splits_path.read_text())
        lines.append(f"- splits (seed {s['seed']}): {len(s['train'])} train / {len(s['val'])} val / "
                     f"{len(s['test'])} test, {len(s['folds'])} folds")
    if rows:
        lines += ["", "| case | labels | image | range | label | label fractions 0/1/2/3 | size |",
                  "|---|---|---|---|---|---|---|", *rows]
    if unreadable:
        lines += ["", "## Unreadable files (listed ok in the manifest)", "", *unreadable]
    if failed:
        lines += ["", "## Failed cases", ""]
        lines += [f"- **{e['id']}**: {e.get('error', 'unknown error')}" for e in failed]
    return "\n".join(lines) + "\n"
