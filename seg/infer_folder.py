"""`segbench infer` over a folder: every case predicted by one ensemble, one bad case never stopping
the others, `infer.json` beside the predictions.

On a GPU the host half of a case (validation, preparation, putting the labels back on the source
grid, NIfTI writing: seconds per BraTS case) would leave the GPU idle for most of the run. So the
three stages overlap: the next case is prepared in one thread and the previous case's outputs are
written in another while the current case is predicted. At most one prepared case waits and one
write runs, so memory stays a few volumes whatever the folder's size. On a CPU the stages run one
after another (they would compete for the cores the model uses).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from seg.infer import (
    InferConfig,
    check_ensemble,
    load_ensemble,
    predict_prepared,
    prediction_path,
    prepare_input,
    resolve_device,
    write_outputs,
)


def _timed(fn: Callable, *args) -> tuple[Any, float]:
    """(fn(*args), seconds); an exception carries the seconds spent as `segbench_seconds`."""
    start = time.perf_counter()
    try:
        return fn(*args), time.perf_counter() - start
    except Exception as err:
        err.segbench_seconds = time.perf_counter() - start
        raise


def _spent(err: Exception) -> float:
    return getattr(err, "segbench_seconds", 0.0)


def _now(fn: Callable, *args) -> Future:
    """`fn(*args)` run here, as a finished Future (the serial path shares the pipelined code)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:  # noqa: BLE001 - delivered by result(), as a pool's would be
        future.set_exception(err)
    return future


def infer_folder(
    checkpoints: Sequence[str | Path],
    src: str | Path,
    out_dir: str | Path,
    cfg: InferConfig | None = None,
    device: str = "auto",
    overlap_host: bool | None = None,
) -> dict[str, Any]:
    """Predict every case below `src` with the ensemble of `checkpoints`; one bad case never stops
    the others. Returns {"cases": [{"id", "status", "file"|"error", "seconds"}], ...}, also
    written to `out_dir/infer.json` ("seconds": the case's own prepare + predict + write time).
    `overlap_host`: prepare and write in threads beside the prediction (default: on CUDA)."""
    from tqdm import tqdm

    from seg.data.cases import discover, no_cases_reason
    from seg.data.store import write_json
    from seg.ensemble import probabilities_path

    cfg = dataclasses.replace(cfg or InferConfig())
    dev = resolve_device(device)
    models, ckpts = load_ensemble(checkpoints, dev, cfg)
    prep_cfg, target, cfg.roi = check_ensemble(checkpoints, ckpts, cfg.roi)
    cases = discover(Path(src).absolute())  # absolute: the sources in saved probabilities are read later
    if not cases:
        raise FileNotFoundError(no_cases_reason(src))
    seen: dict[str, Path] = {}
    for case in cases:  # two folders of one id would write one file, the second over the first
        folder = case.images[0].parent
        if case.id in seen:
            raise ValueError(f"case {case.id} is in both {seen[case.id]} and {folder}: predict them apart")
        seen[case.id] = folder
    overlap = dev.type == "cuda" if overlap_host is None else overlap_host

    rows: list[dict] = []

    def fail(case, seconds: float, err: Exception) -> None:
        folder = str(case.images[0].parent)  # named once: validation's messages name their files already
        text = str(err) if folder in str(err) else f"{folder}: {err}"
        rows.append({"id": case.id, "status": "error", "error": text, "seconds": round(seconds, 3)})
        # an earlier run's prediction of this case must not pass for this run's
        prediction_path(out_dir, case.id).unlink(missing_ok=True)
        probabilities_path(out_dir, case.id).unlink(missing_ok=True)

    def finish(case, write: Future, seconds: float, info: dict) -> None:
        try:
            path, write_s = write.result()
        except Exception as err:  # noqa: BLE001 - one bad case must not stop the others
            fail(case, seconds + _spent(err), err)
            return
        row = {"id": case.id, "status": "ok", "file": str(path)}
        if cfg.min_et_mm3 > 0:  # how often the threshold acts, for tuning it
            row.update(info)
        rows.append({**row, "seconds": round(seconds + write_s, 3)})

    with ThreadPoolExecutor(1, "infer-prepare") as preparer, ThreadPoolExecutor(1, "infer-write") as writer:
        def start(pool: ThreadPoolExecutor, fn: Callable, *args) -> Future:
            return pool.submit(_timed, fn, *args) if overlap else _now(_timed, fn, *args)

        prepared_next = start(preparer, prepare_input, cases[0], prep_cfg)
        pending = None  # (case, write future, seconds so far, info) of the case being written
        for i, case in enumerate(tqdm(cases, desc="infer", unit="case", disable=None)):
            prepared_now = prepared_next
            if i + 1 < len(cases):  # the next case's host work, while this one is predicted
                prepared_next = start(preparer, prepare_input, cases[i + 1], prep_cfg)
            spent = 0.0
            try:
                prepared, spent = prepared_now.result()
                start_s = time.perf_counter()
                try:
                    probs = predict_prepared(models, prepared, cfg, dev, target).cpu()
                finally:
                    spent += time.perf_counter() - start_s
            except Exception as err:  # noqa: BLE001 - one bad case must not stop the others
                fail(case, spent + _spent(err), err)
                continue
            if pending is not None:  # one write at a time: probabilities wait for the disk in memory
                finish(*pending)
            info: dict = {}
            write = start(writer, write_outputs, probs, prepared["meta"], case.id, out_dir, cfg, target, info)
            pending = (case, write, spent, info)
            prepared = probs = None
        if pending is not None:
            finish(*pending)
    order = {case.id: i for i, case in enumerate(cases)}
    rows.sort(key=lambda row: order[row["id"]])
    summary = {
        "checkpoints": [str(p) for p in checkpoints],
        "config": dataclasses.asdict(cfg),
        "prep": prep_cfg.to_dict(),
        "device": str(dev),
        "cases": rows,
    }
    write_json(Path(out_dir) / "infer.json", summary)
    return summary
