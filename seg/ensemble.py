"""Ensembles of saved probabilities: `segbench infer --save-probabilities` writes each case's
averaged probabilities, `segbench ensemble` averages those of several infer runs and writes label maps.

nnU-Net's `--save_probabilities` + `nnUNetv2_ensemble`, for configurations that cannot share one
`segbench infer` call (a UNet and a SwinUNETR, other TTA or window settings, runs on other machines).
Probabilities are kept on the prepared grid (float16, [C, S, S, S] with the case's prep metadata), where
the models predicted them; the label map is made from their mean and put back on the source grid as
`segbench infer` does (`seg.data.inverse.write_prediction`). Each run counts once, whatever number of
checkpoints and flips it averaged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

PROBS_SUFFIX = "_probs.pt"


def save_probabilities(path: str | Path, probs: torch.Tensor, meta: dict, target: str) -> Path:
    """One case's probabilities [C, *spatial] (stored float16) with its prep metadata and target; atomic."""
    from seg.data.store import atomic_write

    obj = {"probs": probs.detach().to("cpu", torch.float16).contiguous(), "meta": meta, "target": target}
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_probabilities(path: str | Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, foreign objects
        raise ValueError(f"{path}: not a readable probabilities file ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict) or not {"probs", "meta", "target"} <= set(obj):
        raise ValueError(f"{path}: not a `segbench infer --save-probabilities` file")
    return obj


def probability_files(folder: str | Path) -> dict[str, Path]:
    """{case id: file} of the `<id>_probs.pt` files in a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = {p.name[: -len(PROBS_SUFFIX)]: p for p in sorted(folder.glob(f"*{PROBS_SUFFIX}"))}
    if not found:
        raise FileNotFoundError(f"{folder}: no *{PROBS_SUFFIX} files (run `segbench infer "
                                "--save-probabilities`)")
    return found


def ensemble_case(paths: Sequence[Path], out_path: Path, min_et_mm3: float = 0.0) -> dict[str, Any]:
    """Average one case's saved probabilities and write its label map; ValueError naming the file
    that does not fit the first (another target, prepared grid or source)."""
    from seg.data.inverse import write_prediction
    from seg.targets import to_labels

    first = load_probabilities(paths[0])
    total = first["probs"].float()
    for path in paths[1:]:
        other = load_probabilities(path)
        for key, what in (("target", "target"), ("meta", "prepared case (source files or prep settings)")):
            if other[key] != first[key]:
                raise ValueError(f"{path}: another {what} than {paths[0]}")
        total += other["probs"].float()
    label = to_labels((total / len(paths))[None], first["target"])[0].to(torch.uint8)
    info: dict = {}
    write_prediction(out_path, label, first["meta"], min_et_mm3, info)
    return info


def ensemble_folders(
    folders: Sequence[str | Path], out_dir: str | Path, min_et_mm3: float = 0.0
) -> dict[str, Any]:
    """Label maps `<out_dir>/<id>_pred.nii.gz` from the mean of each case's probabilities over
    `folders`; a case missing from a folder, or one that does not fit, is an error row and the others
    go on. Returns the summary, also written to `out_dir/ensemble.json`."""
    from tqdm import tqdm

    from seg.data.store import write_json

    files = [probability_files(f) for f in folders]
    rows = []
    for case_id in tqdm(sorted(set().union(*files)), desc="ensemble", unit="case", disable=None):
        start = time.perf_counter()
        out_path = Path(out_dir) / f"{case_id}_pred.nii.gz"
        lacking = [str(f) for f, found in zip(folders, files, strict=True) if case_id not in found]
        try:
            if lacking:
                raise ValueError(f"no probabilities for case {case_id} in {', '.join(lacking)}")
            info = ensemble_case([found[case_id] for found in files], out_path, min_et_mm3)
            row = {"id": case_id, "status": "ok", "file": str(out_path), **(info if min_et_mm3 > 0 else {})}
        except (OSError, ValueError) as err:
            row = {"id": case_id, "status": "error", "error": str(err)}
            out_path.unlink(missing_ok=True)  # an earlier run's label map must not pass for this one's
        row["seconds"] = round(time.perf_counter() - start, 3)
        rows.append(row)
    summary = {"folders": [str(f) for f in folders], "min_et_mm3": min_et_mm3, "cases": rows}
    write_json(Path(out_dir) / "ensemble.json", summary)
    return summary
