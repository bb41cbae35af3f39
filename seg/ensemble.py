"""Ensembles of saved probabilities: `segbench infer --save-probabilities` writes each case's
averaged probabilities, `segbench ensemble` averages those of several infer runs and writes label maps.

nnU-Net's `--save_probabilities` + `nnUNetv2_ensemble`, for configurations that cannot share one
`segbench infer` call (a UNet and a SwinUNETR, other TTA or window settings, runs on other machines).
Probabilities are kept on the prepared grid (float32, [C, S, S, S] with the case's prep metadata), where
the models predicted them; the label map is made from their mean and put back on the source grid as
`segbench infer` does (`seg.data.inverse.write_prediction`; the source images are read for their
header). Each run counts once, whatever number of checkpoints and flips it averaged. One folder alone
gives its run's label maps again: post-processing (`--min-et-mm3`) chosen after the run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

PROBS_SUFFIX = "_probs.pt"


def probabilities_path(folder: str | Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}{PROBS_SUFFIX}"


def save_probabilities(path: str | Path, probs: torch.Tensor, meta: dict, target: str) -> Path:
    """One case's probabilities [C, *spatial] with its prep metadata and target; atomic. float32: in
    float16 a region probability up to 0.50024 rounds to 0.5 and leaves the region (threshold > 0.5)."""
    from seg.data.store import atomic_write

    obj = {"probs": probs.detach().to("cpu", torch.float32).contiguous(), "meta": meta, "target": target}
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
    from seg.targets import mean_to_labels

    first = load_probabilities(paths[0])
    total = first["probs"].float()
    sources = [first["meta"]["source"]]
    for path in paths[1:]:
        other = load_probabilities(path)
        if other["target"] != first["target"]:
            raise ValueError(f"{path}: another target ({other['target']}) than {paths[0]} "
                             f"({first['target']})")
        # the same case prepared alike; its source files may have been reached by another path
        if _grid(other["meta"]) != _grid(first["meta"]) or other["probs"].shape != first["probs"].shape:
            raise ValueError(f"{path}: another prepared case or prep settings than {paths[0]}")
        sources.append(other["meta"]["source"])
        total += other["probs"].float()
    label = mean_to_labels(total[None], len(paths), first["target"])[0].to(torch.uint8)
    reachable = [s for s in sources if Path(s["t1"]).is_file()]  # the header is read from the source
    if not reachable:
        raise ValueError(f"{sources[0]['t1']}: the case's source image is not here (needed for its header)")
    info: dict = {}
    write_prediction(out_path, label, {**first["meta"], "source": reachable[0]}, min_et_mm3, info)
    return info


# prep settings that leave the prepared grid as it is: models prepared with other intensities (the reason
# to ensemble saved probabilities rather than run one infer) or stored in another format still average
_NOT_GRID = ("format", "intensity", "window_min", "window_max", "zscore_clip")


def _grid(meta: dict) -> dict:
    """What places the probabilities on the source: the case's prepared grid (crop, shapes, affines,
    size, spacing), not its source's path."""
    grid = {k: v for k, v in meta.items() if k != "source"}
    if isinstance(grid.get("config"), dict):
        grid["config"] = {k: v for k, v in grid["config"].items() if k not in _NOT_GRID}
    return grid


def ensemble_folders(
    folders: Sequence[str | Path], out_dir: str | Path, min_et_mm3: float = 0.0
) -> dict[str, Any]:
    """Label maps `<out_dir>/<id>_pred.nii.gz` from the mean of each case's probabilities over
    `folders`; a case missing from a folder, or one that does not fit, is an error row and the others
    go on. Returns the summary, also written to `out_dir/ensemble.json`."""
    from tqdm import tqdm

    from seg.data.store import write_json
    from seg.infer import prediction_path
    from seg.postprocess import check_min_et_mm3

    check_min_et_mm3(min_et_mm3)
    files = [probability_files(f) for f in folders]
    rows = []
    for case_id in tqdm(sorted(set().union(*files)), desc="ensemble", unit="case", disable=None):
        start = time.perf_counter()
        out_path = prediction_path(out_dir, case_id)
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
