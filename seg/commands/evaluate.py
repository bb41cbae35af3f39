"""`segbench eval`: score predicted label maps against references (BraTS ET/TC/WT Dice and HD95).

`--pred` and `--ref` are each one NIfTI label map or a folder searched recursively; files are
matched by case id, the file name without `.nii[.gz]` and without a trailing `_seg`, `-seg`,
`_pred...` or `-pred...` (so `BraTS2021_00001_pred.nii.gz` matches `BraTS2021_00001/..._seg.nii.gz`).
In a reference folder that holds raw cases, only the seg files are read; a prediction of an image-only
case there (no seg file) is skipped, not an error. A prediction folder holding `segbench infer`'s
`<id>_pred` files is read for those, and for the cases they lack, files named as other predictions
(`<id>_pred-model`); never for seg files beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

_ID = re.compile(r"^(?P<id>.+?)(?:[_-](?:seg|pred)(?:[_-].*)?)?$")
_NIFTI = re.compile(r"\.nii(\.gz)?$")


def case_id(path: str | Path) -> str:
    """Case id of a label-map file name (see module doc)."""
    stem = _NIFTI.sub("", Path(path).name)
    return _ID.match(stem)["id"]


def label_files(path: str | Path, predictions: bool = False) -> dict[str, Path]:
    """{case id: file} for one NIfTI or every label map below a folder. With `predictions`, a folder
    holding `segbench infer`'s `<id>_pred` files gives those (predictions written beside raw cases
    must not be passed over for the cases' own seg files)."""
    path = Path(path)
    if path.is_file():
        return {case_id(path): path}
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    from seg.data.cases import discover, nifti_files  # nifti_files: discover's walk (follows links)

    files = [p for p in nifti_files(path) if _NIFTI.search(p.name)]
    stems = {p: _NIFTI.sub("", p.name) for p in files}
    inferred = [p for p in files if stems[p].endswith("_pred")]  # `segbench infer`'s label maps
    if predictions and inferred:
        # then, for the cases infer's files lack, files named as other predictions (`_pred-model`)
        have = {case_id(p) for p in inferred}
        named = [p for p in files if p not in inferred and re.search(r"[_-]pred[_-]", stems[p])]
        segs = inferred + [p for p in named if case_id(p) not in have]
    else:
        if not predictions:  # infer's predictions written beside the reference cases are never references
            files = [p for p in files if p not in inferred]
        segs = [p for p in files if re.search(r"[_-]seg$", stems[p])]
    # a raw-case folder: only its seg files are label maps, never a case's images
    images = {f for case in discover(path) for f in case.images}
    found: dict[str, Path] = {}
    for p in segs or [f for f in files if f not in images]:
        cid = case_id(p)
        if cid in found:
            raise ValueError(f"{path}: two label maps for case {cid}: {found[cid]} and {p}")
        found[cid] = p
    if not found:
        what = "only the images of image-only cases" if files else "no NIfTI files"
        raise FileNotFoundError(f"{path}: no NIfTI label maps found ({what})")
    return found


def image_only_cases(path: str | Path) -> set[str]:
    """Ids of the BraTS cases below a folder that have images but no seg file (nothing to score)."""
    from seg.data.cases import discover

    path = Path(path)
    return {case.id for case in discover(path) if case.seg is None} if path.is_dir() else set()


def _load(path: Path):
    import nibabel as nib
    import numpy as np

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises several types for unreadable / truncated files
        raise ValueError(f"{path}: not a readable NIfTI label map ({type(err).__name__}: {err})") from err
    if data.ndim != 3:
        raise ValueError(f"{path}: label map is {data.ndim}-D with shape {data.shape}; expected 3-D")
    if data.dtype.kind == "f":
        if not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path}: non-integer label values")
        data = data.astype(np.int16)
    return img, data


def evaluate_pair(pred_path: Path | None, ref_path: Path, labels: str = "auto") -> dict:
    """Region metrics for one prediction/reference pair; ValueError naming the file on bad input.
    `pred_path` None: a case without a prediction scored as an all-background one (`--missing empty`):
    Dice 0 and HD95 373.13 where the reference has the region, as challenge leaderboards count it."""
    import numpy as np
    from nibabel.affines import voxel_sizes

    from seg import metrics

    if pred_path is not None:
        pred_img, pred = _load(pred_path)
    ref_img, ref = _load(ref_path)
    if pred_path is None:
        pred = np.zeros_like(ref)
    elif pred.shape != ref.shape:
        raise ValueError(f"{pred_path}: shape {pred.shape} differs from reference {ref_path} {ref.shape}")
    elif not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        raise ValueError(f"{pred_path}: affine differs from reference {ref_path} (not on the same grid)")
    try:
        convention = metrics.detect_convention(pred, ref) if labels == "auto" else labels
    except ValueError:  # one map of each: name both (a folder may mix conventions, so --labels is no cure)
        held = [np.unique(m).tolist() for m in (pred, ref)]
        raise ValueError(f"{pred_path} (labels {held[0]}) and its reference {ref_path} (labels {held[1]}) "
                         "mix the 2021 (ET = 4) and 2023 (ET = 3) conventions") from None
    metrics.check_labels(pred, convention, str(pred_path))
    metrics.check_labels(ref, convention, str(ref_path))
    # the affine's voxel sizes, as the grid check above and prep (MONAI reads the sform) use them: a
    # header whose pixdim disagrees with its sform would otherwise put HD95 on another grid
    spacing_mm = [float(s) for s in voxel_sizes(ref_img.affine)]
    pred_voxels, ref_voxels = metrics.region_voxels(pred, convention), metrics.region_voxels(ref, convention)
    return {
        "regions": metrics.evaluate_case(pred, ref, spacing_mm, convention),
        "seed_dice": metrics.seed_dice(pred, ref, convention),
        "labels": convention,
        "voxels": {r: {"pred": pred_voxels[r], "ref": ref_voxels[r]} for r in metrics.REGIONS},
    }


def _scored(pair: tuple) -> dict | str:
    """evaluate_pair(*pair), or the ValueError's message (a bad case is a line, in a worker process too)."""
    try:
        return evaluate_pair(*pair)
    except ValueError as err:
        return str(err)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # the processes are the parallelism


def _scored_all(jobs: list[tuple], workers: int, score=_scored):
    """(case id, `score(pair)`) per (case id, pair, file named if its worker dies) job, in `workers`
    spawned processes when more than one."""
    if workers <= 1 or len(jobs) <= 1:
        for cid, pair, _ in jobs:
            yield cid, score(pair)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = {pool.submit(score, pair): (cid, file) for cid, pair, file in jobs}
        for fut in as_completed(futures):
            cid, file = futures[fut]
            try:
                yield cid, fut.result()
            except BrokenProcessPool:  # a worker died (the OOM killer): the pool and its unfinished cases
                yield cid, (f"{file}: not scored, a worker process died (out of memory?); "
                            "try fewer --workers")


def evaluate_paths(
    pred: str | Path, ref: str | Path, labels: str = "auto", missing: str = "error", workers: int = 1
) -> tuple[dict, list[str]]:
    """The `segbench eval` JSON document and a list of error lines (one per failed or missing case).

    missing: "error" (a reference case without a prediction is an error line and not in the mean) or
    "empty" (it is scored as an all-background prediction, in the mean, and named in the notes).
    workers: processes scoring cases at once (each reads its pair and computes HD95 on one thread)."""
    from tqdm import tqdm

    from seg import metrics

    unlabelled = image_only_cases(ref)
    preds = label_files(pred, predictions=True)
    try:
        refs = label_files(ref)
    except FileNotFoundError:
        if not unlabelled:
            raise
        refs = {}  # only image-only cases: every prediction is skipped below
    notes = []
    if Path(pred).is_file() and Path(ref).is_file():  # two single files: pair them whatever their names
        (pred_id, pred_file), (ref_id, ref_file) = next(iter(preds.items())), next(iter(refs.items()))
        if pred_id != ref_id:  # allowed (renamed files), but a mix-up scores the wrong case silently
            notes.append(f"scoring {pred_file} against {ref_file}: their case ids differ ({pred_id}, "
                         f"{ref_id})")
        preds = {ref_id: pred_file}
    unpredicted = sorted(set(refs) - set(preds))
    errors = [] if missing == "empty" else [f"{refs[cid]}: no prediction for case {cid} in {pred}"
                                            for cid in unpredicted]
    # predictions of image-only cases (infer runs them too) have nothing to be scored against
    skipped = sorted((set(preds) - set(refs)) & unlabelled)
    errors += [
        f"{preds[cid]}: no reference for case {cid} in {ref}"
        for cid in sorted(set(preds) - set(refs) - unlabelled)
    ]
    jobs = [(cid, (preds[cid], refs[cid], labels), preds[cid]) for cid in sorted(set(preds) & set(refs))]
    if missing == "empty":
        jobs += [(cid, (None, refs[cid], labels), refs[cid]) for cid in unpredicted]
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    workers = min(workers, os.cpu_count() or 1)  # more processes than cores only add start-up time
    for cid, result in tqdm(_scored_all(sorted(jobs), workers), total=len(jobs), desc="eval", unit="case",
                            disable=None):
        if isinstance(result, str):
            failed[cid] = result
        else:
            results[cid] = result
    errors += [failed[cid] for cid in sorted(failed)]
    cases, seed, conventions, voxels = {}, {}, {}, {}
    for cid in sorted(results):  # the document's order whatever order the workers finished in
        result = results[cid]
        cases[cid], seed[cid], conventions[cid] = result["regions"], result["seed_dice"], result["labels"]
        voxels[cid] = result["voxels"]
    scored_empty = [cid for cid in unpredicted if cid in cases] if missing == "empty" else []
    if scored_empty:
        notes.append(f"{len(scored_empty)} case(s) without a prediction scored as empty predictions: "
                     f"{', '.join(scored_empty)}")
    elif unpredicted and cases and missing != "empty":
        notes.append(f"the mean is over {len(cases)} case(s); {len(unpredicted)} without a prediction are "
                     "not in it (--missing empty scores them as empty predictions)")
    both_empty = {r: sum(1 for v in voxels.values() if not v[r]["pred"] and not v[r]["ref"])
                  for r in metrics.REGIONS}
    if any(both_empty.values()):
        counts = ", ".join(f"{r} {n}" for r, n in both_empty.items())
        notes.append("cases with a region empty in both prediction and reference (Dice 1, HD95 0 by the "
                     f"BraTS rule; they raise the mean): {counts}")
    doc = {
        "cases": cases,
        "mean": metrics.mean_over_cases(cases),
        "n_cases": len(cases),
        "both_empty": both_empty,
        "voxels": voxels,
        "labels": conventions,
        "seed_dice": seed,
        "errors": errors,
        "skipped": {cid: "image-only case: no reference label map" for cid in skipped},
        "scored_empty": scored_empty,
        "notes": notes,
    }
    return doc, errors


def _table(doc: dict) -> str:
    from seg import metrics

    rows = [
        "| case | ET Dice | TC Dice | WT Dice | ET HD95 | TC HD95 | WT HD95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in [*doc["cases"].items(), *([("mean", doc["mean"])] if doc["mean"] else [])]:
        dice = " | ".join(f"{r[k]['dice']:.4f}" for k in ("ET", "TC", "WT"))
        hd = " | ".join(f"{r[k]['hd95']:.2f}" for k in ("ET", "TC", "WT"))
        rows.append(f"| {name} | {dice} | {hd} |")
    if doc["mean"]:
        rows += ["", metrics.rates_table(doc["mean"])]
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    try:
        doc, errors = evaluate_paths(args.pred, args.ref, args.labels, args.missing, args.workers)
    except (FileNotFoundError, ValueError) as err:
        print(f"segbench eval: {err}", file=sys.stderr)
        return 1
    for line in errors:
        print(f"segbench eval: {line}", file=sys.stderr)
    for note in doc["notes"]:
        print(f"segbench eval: note: {note}", file=sys.stderr)
    if doc["skipped"]:
        print(f"segbench eval: skipped {len(doc['skipped'])} image-only case(s), nothing to score against: "
              f"{', '.join(doc['skipped'])}", file=sys.stderr)
    if args.out:
        from seg.data.store import write_json

        write_json(args.out, doc)
        print(_table(doc))
        print(f"wrote {args.out}")
    else:
        print(json.dumps(doc, indent=2))
    return 1 if errors or not doc["cases"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from seg.commands.data import positive_int

    p = subparsers.add_parser(
        "eval",
        help="score label maps against references: BraTS ET/TC/WT Dice and HD95 (mm)",
        description="Score predicted label maps against references (BraTS regions ET/TC/WT: Dice, HD95 in "
        "mm from the voxel spacing). Both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 373.13. The JSON "
        "also has each region's voxel counts (voxels) and how many cases had a region empty on both sides "
        "(both_empty).",
    )
    p.add_argument("--pred", required=True, help="predicted label map (NIfTI) or a folder of them")
    p.add_argument(
        "--ref", required=True, help="reference label map (NIfTI) or a folder (raw cases: their seg)"
    )
    p.add_argument(
        "--labels",
        choices=("auto", "2021", "2023"),
        default="auto",
        help="label convention: 2021 (ET=4) or 2023 (ET=3); auto: from the values present (default)",
    )
    p.add_argument(
        "--missing",
        choices=("error", "empty"),
        default="error",
        help="a reference case without a prediction: error (reported, exit 1, not in the mean; default) or "
        "empty (scored as an all-background prediction, as challenge leaderboards do)",
    )
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes scoring cases at once, at most one per CPU core (default 1; each case "
                        "takes ~2-4 s at 240x240x155, a process ~2 s to start)")
    p.add_argument("--out", help="write the JSON here (default: print it)")
    p.set_defaults(func=run)
