"""K-fold cross-validation: train one model per fold, then score each fold model and their ensemble
on the held-out test split.

Folds come from the prepared folder's `splits.json` (`seg.data.splits`: folds cover train+val, the
test split stays out of every fold). Fold k trains under `RUN/fold<k>` with `seg.train.train`
(`fold=k`, `resume=True`, so a rerun skips finished folds and continues an interrupted one). The
test cases are scored in prepared space (labels 0..3, region Dice and HD95, the prepared voxel
size in mm taken from each case's crop box): each fold model's probabilities are computed once and
their mean is the ensemble, so scoring K single models and the ensemble costs K predictions.
Writes `RUN/cv.json` and `RUN/cv.md`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg import metrics
from seg.data.inverse import prepared_spacing_mm
from seg.infer import InferConfig, check_ensemble, check_roi, load_ensemble, resolve_device, resolve_precision


def fold_count(data_dir: str | Path, folds: int | None) -> tuple[int, dict]:
    """(folds to train, splits) — all folds of splits.json by default; ValueError when impossible."""
    from seg.data.splits import SPLITS, load_splits

    path = Path(data_dir) / SPLITS
    splits = load_splits(data_dir)
    available = len(splits.get("folds", []))
    k = available if folds is None else folds
    if k < 2 or k > available:
        raise ValueError(f"{path} defines {available} folds; cross-validation needs 2..{available}, got {k}")
    if not splits.get("test"):
        raise ValueError(f"{path}: the test split is empty; the ensemble needs held-out test cases")
    for fold in range(k):  # found before any fold trains (cases removed by a prep re-run can empty one)
        empty = [part for part in ("train", "val") if not splits["folds"][fold].get(part)]
        if empty:
            raise ValueError(f"{path}: fold {fold} has no {' and no '.join(empty)} cases; remake the splits "
                             f"(segbench data splits {Path(data_dir)})")
    return k, splits


def _labelled_cases(data_dir: str | Path, ids: list[str], errors: list[str], desc: str):
    """(case id, prepared case) for each of `ids` in a prepared or packed folder, as training reads
    it; a case that cannot be read or has no label is added to `errors` and skipped, so it never
    costs the others their scores."""
    from tqdm import tqdm

    from seg.data.formats import open_reader

    reader = open_reader(data_dir)
    for case_id in tqdm(ids, desc=desc, unit="case", disable=None):
        try:
            case = reader.read(case_id)
            if "label" not in case:
                raise ValueError("case has no label")
        except (OSError, ValueError, KeyError) as err:
            errors.append(f"{data_dir}: {case_id}: {err}")
            continue
        yield case_id, case


@torch.no_grad()
def tune_min_et(
    checkpoints: list[Path], val_ids: list[list[str]], data_dir: str | Path, cfg: InferConfig,
    device: str = "auto",
) -> dict[str, Any]:
    """Choose `--min-et-mm3` as nnU-Net chooses its post-processing: on out-of-fold predictions (fold
    k's model on fold k's validation cases), the volume of `seg.postprocess.MIN_ET_CANDIDATES_MM3`
    with the best mean ET Dice. Returns `seg.postprocess.choose_min_et`'s dict plus "errors"."""
    from seg.infer import sliding_window_predict
    from seg.postprocess import choose_min_et, et_dice_by_threshold
    from seg.speed import to_input
    from seg.targets import to_labels

    dev = resolve_device(device)
    precision = resolve_precision(cfg.precision, dev)
    per_case, errors = [], []
    for checkpoint, ids in zip(checkpoints, val_ids, strict=True):
        (model,), (ckpt,) = load_ensemble([checkpoint], dev, cfg)
        _, target, roi = check_ensemble([checkpoint], [ckpt], cfg.roi, data_dir)
        for _, case in _labelled_cases(data_dir, ids, errors, f"cv tune {Path(checkpoint).parent.name}"):
            image = to_input(case["image"][None].float().to(dev), cfg.channels_last)
            probs = sliding_window_predict(model, image, roi, cfg.overlap, cfg.sw_batch_size, cfg.mode,
                                           cfg.tta, precision, target=target)
            pred = to_labels(probs, target)[0].cpu().numpy()
            voxel_mm3 = float(np.prod(prepared_spacing_mm(case["meta"])))
            per_case.append(et_dice_by_threshold(pred, case["label"][0].numpy(), voxel_mm3))
    return {**choose_min_et(per_case), "errors": errors}


@torch.no_grad()
def evaluate_test(
    checkpoints: list[Path], data_dir: str | Path, test_ids: list[str], cfg: InferConfig, device: str = "auto"
) -> dict[str, Any]:
    """{"ensemble": {"cases", "mean"}, "folds": [{"checkpoint", "cases", "mean"}]} on `test_ids`."""
    from seg.infer import sliding_window_predict
    from seg.postprocess import small_et_to_core
    from seg.speed import to_input
    from seg.targets import mean_to_labels, to_labels

    dev = resolve_device(device)
    models, ckpts = load_ensemble(checkpoints, dev, cfg)
    _, target, roi = check_ensemble(checkpoints, ckpts, cfg.roi, data_dir)
    precision = resolve_precision(cfg.precision, dev)
    per_fold: list[dict[str, Any]] = [{} for _ in models]
    ensemble: dict[str, Any] = {}
    errors: list[str] = []
    for case_id, case in _labelled_cases(data_dir, test_ids, errors, "cv test"):
        image = to_input(case["image"][None].float().to(dev), cfg.channels_last)
        ref = case["label"][0].numpy()
        spacing = prepared_spacing_mm(case["meta"])
        voxel_mm3 = float(np.prod(spacing))
        total = None
        for k, model in enumerate(models):
            probs = sliding_window_predict(
                model, image, roi, cfg.overlap, cfg.sw_batch_size, cfg.mode, cfg.tta, precision, target=target
            )
            pred, _ = small_et_to_core(to_labels(probs, target)[0].cpu().numpy(), voxel_mm3, cfg.min_et_mm3)
            per_fold[k][case_id] = metrics.evaluate_case(pred, ref, spacing, "prepared")
            total = probs if total is None else total.add_(probs)
        pred = mean_to_labels(total, len(models), target)[0].cpu().numpy()
        pred, _ = small_et_to_core(pred, voxel_mm3, cfg.min_et_mm3)
        ensemble[case_id] = metrics.evaluate_case(pred, ref, spacing, "prepared")
    return {
        "ensemble": {"cases": ensemble, "mean": metrics.mean_over_cases(ensemble)},
        "folds": [
            {"checkpoint": str(p), "cases": c, "mean": metrics.mean_over_cases(c)}
            for p, c in zip(checkpoints, per_fold, strict=True)
        ],
        "roi": roi,
        "precision": precision,
        "errors": errors,
    }


def fold_spread(means: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{region: {metric: {"mean", "sd"}}} of the fold models' test means (sd with ddof 1: the folds
    are a sample of the models this recipe trains; 0 for one fold); {} when no fold was scored."""
    means = [m for m in means if m]
    if not means:
        return {}

    def stats(values: list[float]) -> dict[str, float]:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return {"mean": float(np.mean(values)), "sd": sd}

    return {region: {metric: stats([m[region][metric] for m in means]) for metric in ("dice", "hd95")}
            for region in metrics.REGIONS}


def _postprocess_line(post: dict[str, Any]) -> str:
    where = f"{post['cases']} out-of-fold validation case(s)"
    if not post["mean_et_dice"]:
        return "Post-processing: no out-of-fold validation case could be scored; none applied."
    dice = dict(zip(post["candidates_mm3"], post["mean_et_dice"], strict=True))
    if post["min_et_mm3"] == 0:
        return f"Post-processing tuned on {where}: none helps (mean ET Dice without it {dice[0.0]:.4f})."
    return (f"Post-processing tuned on {where}: a predicted ET under {post['min_et_mm3']:g} mm³ becomes "
            f"necrotic core (mean ET Dice {dice[post['min_et_mm3']]:.4f}, without: {dice[0.0]:.4f}); the "
            "test scores above use it.")


def markdown_table(doc: dict[str, Any]) -> str:
    """One row per fold model and one for the ensemble: validation Dice, test Dice / HD95 per region."""
    header = (
        "| model | val Dice (best) | test ET Dice | test TC Dice | test WT Dice | test mean Dice "
        "| ET HD95 mm | TC HD95 mm | WT HD95 mm |"
    )
    lines = [
        f"Cross-validation: {doc['model']}, {doc['folds']} folds, {len(doc['test']['ids'])} test cases",
        "",
        "Test scores are on the prepared grid (the resized volumes the models see, HD95 in mm from its "
        "spacing), not the original images: `segbench infer` + `segbench eval` score those.",
        "",
    ]
    lines += [header, "|" + "---|" * 9]
    rows = [
        (f"fold {t['fold']}", t["best_dice"], f["mean"])
        for t, f in zip(doc["train"], doc["test"]["folds"], strict=True)
    ]
    rows.append(("ensemble", None, doc["test"]["ensemble"]["mean"]))
    for name, val, mean in rows:
        if not mean:  # no test case could be scored (listed below)
            lines.append("| " + " | ".join([name, "—" if val is None else f"{val:.4f}", *["—"] * 7]) + " |")
            continue
        dice = [mean[r]["dice"] for r in metrics.REGIONS]
        hd = [mean[r]["hd95"] for r in metrics.REGIONS]
        cells = [
            name,
            "—" if val is None else f"{val:.4f}",
            *(f"{d:.4f}" for d in dice),
            f"{np.mean(dice):.4f}",
        ]
        cells += [f"{h:.2f}" for h in hd]
        lines.append("| " + " | ".join(cells) + " |")
    spread = doc["test"].get("folds_mean_sd")
    if spread and len(rows) > 2:  # two or more fold models: how much the folds' models differ
        def cell(region: str, metric: str, digits: int) -> str:
            s = spread[region][metric]
            return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"

        cells = ["folds mean ± sd", "—", *(cell(r, "dice", 4) for r in metrics.REGIONS),
                 f"{np.mean([spread[r]['dice']['mean'] for r in metrics.REGIONS]):.4f}",
                 *(cell(r, "hd95", 2) for r in metrics.REGIONS)]
        lines.append("| " + " | ".join(cells) + " |")
    for fail in doc.get("failed", []):
        lines.append("| " + " | ".join([f"fold {fail['fold']}", "failed", *["—"] * 7]) + " |")
    if doc["test"]["ensemble"]["mean"]:
        lines += ["", "Ensemble on the test cases:", "", metrics.rates_table(doc["test"]["ensemble"]["mean"])]
    post = doc.get("postprocess")
    if post:
        lines += ["", _postprocess_line(post)] + [f"- {e}" for e in post.get("errors", [])]
    for fail in doc.get("failed", []):
        lines += ["", f"fold {fail['fold']} failed (left out of the scores and the ensemble): "
                      f"{fail['error']}"]
    errors = doc["test"].get("errors", [])
    if errors:
        lines += ["", f"{len(errors)} test case(s) could not be scored, left out of the means:"]
        lines += [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def run_cv(base, folds: int | None = None, infer_cfg: InferConfig | None = None,
           tune_postprocessing: bool = False, given: Collection[str] | None = None) -> dict[str, Any]:
    """Train folds 0..K-1 from `base` (a `seg.train.TrainConfig`; its `out` is the RUN folder),
    then score them and their ensemble on the test split. `tune_postprocessing`: choose the ET
    post-processing volume on the folds' validation cases first (`tune_min_et`) and score the test
    split with it. `given`: the TrainConfig fields the command line set; a fold trained before keeps
    its own KEPT_ON_RESUME settings (epochs, lr, model options, ...) for the others, as `segbench train
    --resume` does (None: `base` as it is for every fold). A fold that fails is recorded and the
    others go on. Returns the cv.json document."""
    from seg.data.formats import read_prep_config
    from seg.data.store import atomic_write, write_json
    from seg.train import train
    from seg.train.config import run_settings

    run_dir = Path(base.out)
    if folds is None and (run_dir / "cv.json").is_file():  # a rerun (rescoring, --tta) keeps its fold count
        folds = json.loads((run_dir / "cv.json").read_text()).get("folds")
    k, splits = fold_count(base.data_dir, folds)
    infer_cfg = infer_cfg or InferConfig()
    stored = [run_settings(run_dir / f"fold{fold}") for fold in range(k)]
    started = next((settings for settings in stored if settings), {})  # a fold not started yet: the run's
    configs = []
    for fold in range(k):
        own = stored[fold] or started
        kept = {} if given is None else {n: v for n, v in own.items() if n not in given}
        configs.append(dataclasses.replace(base, **kept, fold=fold, out=str(run_dir / f"fold{fold}"),
                                           resume=True))
    models = {(c.model, repr(sorted(c.model_options.items()))) for c in configs}
    if len(models) > 1:  # one ensemble, one model
        raise ValueError(f"{run_dir}: its folds would train different models ("
                         + "; ".join(f"fold {c.fold}: {c.model} {c.model_options}" for c in configs)
                         + "): give --model and --model-option for every fold, or use another --out")
    size = read_prep_config(base.data_dir).get("size")
    for cfg in configs:  # a window the model cannot take fails now, not after every fold trained
        roi = infer_cfg.roi or cfg.patch or size
        if roi:
            check_roi(int(roi), cfg.model, cfg.model_options, f"fold {cfg.fold} ({cfg.out})")
    trained, failed = [], []
    for cfg in configs:
        try:
            summary = train(cfg)
            best = Path(cfg.out) / "best.pt"
            if not best.is_file():
                raise RuntimeError(f"training finished without {best}")
        except Exception as err:  # one fold (out of memory, a bad case) must not cost the others
            failed.append({"fold": cfg.fold, "error": f"{type(err).__name__}: {err}"[:500]})
            print(f"segbench cv: fold {cfg.fold} failed: {failed[-1]['error']}", file=sys.stderr)
            continue
        trained.append({"fold": cfg.fold, "checkpoint": str(best), **summary})
    if not trained:
        raise ValueError("every fold failed: " + "; ".join(f"fold {f['fold']}: {f['error']}" for f in failed))
    postprocess = None
    if tune_postprocessing:  # on the folds' validation cases; the test split stays untouched
        checkpoints = [Path(t["checkpoint"]) for t in trained]
        val_ids = [splits["folds"][t["fold"]]["val"] for t in trained]
        postprocess = tune_min_et(checkpoints, val_ids, base.data_dir, infer_cfg, base.device)
        infer_cfg = dataclasses.replace(infer_cfg, min_et_mm3=postprocess["min_et_mm3"])
    test = evaluate_test(
        [Path(t["checkpoint"]) for t in trained], base.data_dir, list(splits["test"]), infer_cfg, base.device
    )
    doc = {
        "model": configs[0].model,
        "model_options": configs[0].model_options,
        "data_dir": str(base.data_dir),
        "folds": k,
        "folds_in_splits": len(splits["folds"]),
        "train": trained,
        "failed": failed,
        "infer": {
            **dataclasses.asdict(infer_cfg),
            "roi": test.pop("roi"),
            "precision": test.pop("precision"),
        },
        "test": {"ids": list(splits["test"]), "labels": "prepared", **test},
    }
    doc["test"]["folds_mean_sd"] = fold_spread([f["mean"] for f in test["folds"]])
    if postprocess is not None:
        doc["postprocess"] = postprocess
    write_json(run_dir / "cv.json", doc)
    table = markdown_table(doc)
    atomic_write(run_dir / "cv.md", lambda tmp: tmp.write_text(table))
    return doc
