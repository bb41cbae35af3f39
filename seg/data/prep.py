"""The eight offline preprocessing steps, from raw BraTS NIfTI to a prepared `.pt` case.

1. channel-first 4-channel image (t1, t1ce, t2, flair) + 1-channel label;
2. reorient to RAS; 3. resample to 1 mm isotropic (linear images, nearest labels);
4. intensities to [0,1] per modality (min-max; or the 0-3000 window; or a brain z-score);
5. crop to the foreground box of the RAW nonzero brain mask, then resize to S^3;
6. labels 0,1,2,4 -> 0,1,2,3 (2021 convention); 7. label dtype per format; 8. save `.pt`.

The foreground box is computed before scaling because real BraTS background can be slightly
negative (BraTS2021_90001): after min-max the zero background is > 0 and the whole volume would
count as foreground. `meta` records what `seg.data.inverse` needs to undo steps 2-5.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seg.data.cases import MODALITIES, Case
from seg.data.inverse import label_to_original, to_convention  # noqa: F401  (public API here)
from seg.data.store import FORMATS, MANIFEST, PT32

INTENSITY_MODES = ("minmax", "window", "zscore")
# Bumped when the steps change, so re-runs do not skip cases prepared by older code.
PREP_VERSION = 1


@dataclass
class PrepConfig:
    """How cases are prepared; everything here (and PREP_VERSION) decides whether a re-run skips."""

    size: int = field(default=128, metadata={"help": "edge S of the S^3 output volume, voxels"})
    format: str = field(default=PT32, metadata={"help": "pt32 (float32/int64) or compact (float16/uint8)"})
    intensity: str = field(
        default="minmax",
        metadata={"help": "minmax per modality; window: fixed [window_min, window_max] clipped; "
                  "zscore: per-modality z-score on brain voxels, clipped to +-zscore_clip, then to [0,1]"},
    )
    window_min: float = field(default=0.0, metadata={"help": "intensity mapped to 0 by intensity=window"})
    window_max: float = field(default=3000.0, metadata={"help": "intensity mapped to 1 by intensity=window"})
    zscore_clip: float = field(default=5.0, metadata={"help": "z-scores beyond +-this are clipped (zscore)"})
    spacing_mm: float = field(default=1.0, metadata={"help": "isotropic voxel size after resampling, mm"})

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} not in {FORMATS}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity {self.intensity!r} not in {INTENSITY_MODES}")
        if self.size < 8:
            raise ValueError(f"size {self.size} is too small (need >= 8)")

    def to_dict(self) -> dict:
        return {**asdict(self), "prep_version": PREP_VERSION}


def _zscore(image, cfg: PrepConfig):
    """Step 4 for intensity=zscore on the whole [4,...] volume: the brain's own statistics per channel."""
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange

    brain = image != 0  # the raw nonzero mask per channel
    z = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    z = ScaleIntensityRange(-cfg.zscore_clip, cfg.zscore_clip, 0.0, 1.0, clip=True)(z)
    return z * brain  # background stays 0 rather than the mapped z = 0 (0.5)


def _scale_box(box, whole_shape: tuple[int, ...], cfg: PrepConfig):
    """Step 4 for minmax and window on the foreground box alone: every voxel outside it is 0 in every
    channel, so the box's values are those of scaling the whole volume (minmax: `_minmax_in_box`)."""
    if cfg.intensity == "minmax":
        return _minmax_in_box(box, whole_shape)
    from monai.transforms import ScaleIntensityRange

    return ScaleIntensityRange(cfg.window_min, cfg.window_max, 0.0, 1.0, clip=True)(box)


def _minmax_in_box(box, whole_shape: tuple[int, ...]):
    """ScaleIntensity(0, 1, channel_wise) of the whole volume, computed on its foreground box: each
    channel's min and max over the box, widened to 0 when the volume extends past the box (zeros
    there), then MONAI's own arithmetic (monai.transforms.utils.rescale_array), so the values are the
    same to the bit (~25 % of a case's preparation saved: the background is never touched)."""
    import torch
    from monai.utils import convert_to_tensor

    outside = tuple(box.shape[1:]) != tuple(whole_shape)
    channels = []
    for c in convert_to_tensor(box, track_meta=False, dtype=torch.float32):
        lo, hi = c.min(), c.max()
        if outside:
            lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        channels.append(c * 0.0 if lo == hi else ((c - lo) / (hi - lo)) * (1.0 - 0.0) + 0.0)
    return torch.stack(channels)


def _affine_list(affine) -> list[list[float]]:
    return np.asarray(affine, dtype=np.float64).tolist()


def _reader_over(images: dict[str, object]):
    """MONAI's NibabelReader over nibabel images already opened (keyed by path string; decompressed
    by `read_validated`, or proxies), a class made on call so that importing this module does not
    import MONAI. The images keep their own affines (nibabel's: the sform when its code is set), where
    MONAI's reader "corrects" a sform whose voxel sizes disagree with pixdim into the qform, in place:
    prep would resample on one grid and record the file's other one as `original_affine`, and the
    inverse would write predictions off their source (WT Dice 0 on such a header)."""
    from monai.data import NibabelReader
    from monai.utils import ensure_tuple

    class ReadAlready(NibabelReader):
        def read(self, data, **kwargs):
            self.filenames = ensure_tuple(data)
            imgs = [images[str(name)] for name in self.filenames]
            return imgs if len(imgs) > 1 else imgs[0]

    return ReadAlready()


def prepare_case(case: Case, cfg: PrepConfig, images: dict[str, object] | None = None) -> dict:
    """Run the eight steps on one (validated) case. Returns {"image", "label"?, "meta"} with
    image float32 [4,S,S,S] in [0,1] and label int64 [1,S,S,S] in 0..3; `store.save_case`
    casts to the configured format. `images`: `seg.data.cases.read_validated`'s in-memory
    images of the case's files (else they are read from disk)."""
    import nibabel as nib
    from monai.transforms import CropForeground, LoadImage, MapLabelValue, Orientation, Resize, Spacing
    from monai.utils import convert_to_tensor

    # 1. channel-first: LoadImage stacks the four files as channels, in MODALITIES order.
    images = images or {str(p): nib.load(str(p)) for p in case.files}
    load = LoadImage(reader=_reader_over(images), image_only=True, ensure_channel_first=True,
                     dtype=np.float32)
    image = load([str(p) for p in case.images])
    label = load(str(case.seg)) if case.seg else None
    src = images[str(case.images[0])]

    # 2-3. RAS, then 1 mm; zeros outside the source field of view so they never count as brain.
    orient = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    pixdim = (cfg.spacing_mm,) * 3
    image = Spacing(pixdim, mode="bilinear", padding_mode="zeros", dtype=np.float32)(orient(image))
    if label is not None:
        label = Spacing(pixdim, mode="nearest", padding_mode="zeros", dtype=np.float32)(orient(label))
    resampled_shape = [int(s) for s in image.shape[1:]]
    resampled_affine = _affine_list(image.affine)

    # 5a. the box comes from the raw (unscaled) nonzero mask of any modality.
    cropper = CropForeground(select_fn=lambda x: x != 0, allow_smaller=True)
    box_start, box_end = cropper.compute_bounding_box(image)
    if np.any(np.asarray(box_end) <= np.asarray(box_start)):
        raise ValueError(f"{case.images[0]}: no nonzero (brain) voxels in any modality")

    # 4 and 5b. scale, crop: z-scores over the whole volume first, minmax and window on the box alone
    if cfg.intensity == "zscore":
        image = cropper.crop_pad(_zscore(image, cfg), box_start, box_end)
    else:
        image = _scale_box(cropper.crop_pad(image, box_start, box_end), tuple(image.shape[1:]), cfg)
    size = (cfg.size,) * 3
    # plain tensors from here: a MetaTensor would pickle its numpy meta into the .pt file
    image = convert_to_tensor(Resize(size, mode="trilinear")(image), track_meta=False)
    image = image.clamp_(0.0, 1.0).contiguous()
    out = {"image": image}
    if label is not None:
        label = cropper.crop_pad(label, box_start, box_end)
        label = Resize(size, mode="nearest-exact")(label)
        if case.convention == "2021":  # 6.
            label = MapLabelValue(orig_labels=[0, 1, 2, 4], target_labels=[0, 1, 2, 3])(label)
        out["label"] = convert_to_tensor(label, track_meta=False).long().contiguous()

    out["meta"] = {
        "id": case.id,
        "convention": case.convention,
        "source": {m: str(p) for m, p in zip(MODALITIES, case.images, strict=True)},
        "seg": str(case.seg) if case.seg else None,
        "original_shape": [int(s) for s in src.shape[:3]],
        "original_affine": _affine_list(src.affine),
        "resampled_shape": resampled_shape,
        "resampled_affine": resampled_affine,
        "crop_start": [int(v) for v in box_start],
        "crop_end": [int(v) for v in box_end],
        "size": cfg.size,
        "config": cfg.to_dict(),
    }
    return out


# ---- all cases below a folder: validation, workers, manifest, skipping finished cases ----


def _source_signature(case: Case) -> str:
    """Changes when any source file is added, removed, rewritten or touched."""
    import hashlib
    import json

    parts = []
    for path in case.files:
        st = path.stat() if path.exists() else None
        parts.append([str(path), st.st_size if st else None, st.st_mtime_ns if st else None])
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _prepare_one(case: Case, cfg: PrepConfig, out_dir: Path) -> dict:
    """Validate, prepare and save one case; never raises (a failure becomes an error entry)."""
    import time

    from seg.data.cases import read_validated
    from seg.data.store import save_case

    t0 = time.perf_counter()
    entry = {"id": case.id, "convention": case.convention, "has_label": case.seg is not None,
             "source_sig": _source_signature(case)}
    try:
        errors, images = read_validated(case)
        if not errors:
            prepared = prepare_case(case, cfg, images)
            save_case(out_dir / f"{case.id}.pt", prepared["image"], prepared.get("label"),
                      prepared["meta"], cfg.format)
    except Exception as err:  # one bad case must not stop the others
        errors = [f"{case.images[0].parent}: preparing {case.id} failed ({type(err).__name__}: {err})"]
    if errors:
        (out_dir / f"{case.id}.pt").unlink(missing_ok=True)  # a stale file from an older run
        errors = [" ".join(e.split()) for e in errors]  # one line each (nibabel's messages hold newlines)
        entry.update(status="error", error="; ".join(errors), errors=errors)
    else:
        entry.update(status="ok", file=f"{case.id}.pt")
    entry.update(seconds=round(time.perf_counter() - t0, 3), peak_rss_bytes=_peak_rss_bytes())
    return entry


def _init_worker(threads: int | None = None, pool_worker: bool = False) -> None:
    """Import the heavy modules up front, so per-case seconds measure the work alone."""
    import signal

    import monai.transforms  # noqa: F401
    import torch

    if pool_worker:  # Ctrl-C reaches the whole process group: the parent stops the pool, not each worker
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        torch.set_num_threads(threads)


def _previous_ok(out_dir: Path, cfg: PrepConfig) -> dict[str, dict]:
    """Entries of a previous run with the same configuration whose file is still there. A previous run
    with another configuration (--size, --format ...) has its files removed, manifest first: an
    interrupted re-run must not leave a folder of two sizes that the manifest half describes."""
    import json

    from seg.data.store import write_json

    path = out_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        prev = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        prev = err
    if not isinstance(prev, dict) or not isinstance(prev.get("cases", []), list):
        why = f"unreadable JSON ({prev})" if isinstance(prev, json.JSONDecodeError) else "another tool's file"
        raise ValueError(f"{path}: not a segbench prep manifest ({why}); remove it, or prepare into "
                         "another --out")
    if prev.get("config") != cfg.to_dict():
        write_json(path, {"config": cfg.to_dict(), "source": prev.get("source"), "cases": []})
        for entry in prev.get("cases", []):
            if entry.get("status") == "ok" and entry.get("file"):
                (out_dir / entry["file"]).unlink(missing_ok=True)
        return {}
    return {e["id"]: e for e in prev.get("cases", [])
            if e.get("status") == "ok" and (out_dir / e.get("file", "")).is_file()}


def _remove_partial_writes(out_dir: Path, case: Case) -> None:
    """The temporary files (seg.data.store.atomic_write) a killed worker left for `case`."""
    for tmp in out_dir.glob(f".{case.id}.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def _prepare_in_pool(cases: list[Case], cfg: PrepConfig, out_dir: Path, workers: int, threads: int,
                     done) -> list[Case]:
    """Prepare `cases` in a pool of `workers` processes, calling `done(entry)` per case; returns the
    cases whose worker died (a broken pool) before it returned them."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    lost, recorded = [], set()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads, True)) as pool:
        futures: dict = {}
        try:
            for case in cases:  # (inside the try: a Ctrl-C while queueing stops what was queued too)
                futures[pool.submit(_prepare_one, case, cfg, out_dir)] = case
            for fut in as_completed(futures):
                try:
                    entry = fut.result()
                except BrokenProcessPool:
                    lost.append(futures[fut])
                    continue
                done(entry)
                recorded.add(fut)
        except BaseException:  # Ctrl-C / SIGTERM: stop now, not after every queued case
            _stop_pool(pool, futures, recorded, out_dir, done)
            raise
    return lost


def _stop_pool(pool, futures: dict, recorded: set, out_dir: Path, done) -> None:
    """Cancel the queued cases, kill the workers, record the cases that finished, and remove what the
    others wrote, so the manifest describes every `.pt` in the folder."""
    workers = list((pool._processes or {}).values())  # (no public way to stop running workers before 3.14;
    pool.shutdown(wait=False, cancel_futures=True)      # shutdown forgets them)
    for proc in workers:
        proc.terminate()
    for proc in workers:
        proc.join()
    for fut, case in futures.items():
        if fut in recorded:
            continue
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            done(fut.result())
        else:
            (out_dir / f"{case.id}.pt").unlink(missing_ok=True)  # written, its entry never came back
            _remove_partial_writes(out_dir, case)


def prepare_all(src: str | Path, out: str | Path, cfg: PrepConfig, workers: int = 1) -> dict:
    """Prepare every case below `src` into `out` (one `.pt` per case + manifest.json) with
    `workers` processes; cases already prepared with the same config and unchanged sources are
    skipped. Problems go to stderr, one line per bad case. Returns the manifest."""
    import sys

    from tqdm import tqdm

    from seg.data.cases import discover
    from seg.data.store import write_json

    src, out_dir = Path(src), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_writes(out_dir)
    # absolute: meta's source files and the skip signature must not depend on the working folder
    cases = discover(src.absolute())
    previous = _previous_ok(out_dir, cfg)
    manifest = {"config": cfg.to_dict(), "source": str(src.resolve()), "cases": []}
    entries: dict[str, dict] = {}
    todo: list[Case] = []
    seen: dict[str, Path] = {}
    for case in cases:
        folder = case.images[0].parent
        old = previous.get(case.id)
        if case.id in seen:  # two folders with one id would write the same .pt
            msg = f"{folder}: duplicate case id {case.id} (also in {seen[case.id]}); not prepared"
            entries[f"{case.id}@{folder}"] = {"id": case.id, "status": "error", "error": msg, "errors": [msg]}
        elif old is not None and old.get("source_sig") == _source_signature(case):
            entries[case.id] = {**old, "skipped": True}
        else:
            todo.append(case)
        seen.setdefault(case.id, folder)

    def record(entry: dict) -> None:
        entries[entry["id"]] = entry
        if "error" in entry:  # one line per bad case, however many problems it has
            tqdm.write(entry["error"], file=sys.stderr)
        manifest["cases"] = sorted(entries.values(), key=lambda e: e["id"])
        write_json(out_dir / MANIFEST, manifest)  # after every case: an interrupted run keeps its work

    for entry in entries.values():
        if "error" in entry:
            tqdm.write(entry["error"], file=sys.stderr)
    # no bar when stderr is not a terminal: its carriage returns would prefix the error lines
    bar = tqdm(total=len(todo), desc=f"prep {src.name}", unit="case", file=sys.stderr, disable=None)
    with _sigterm_as_interrupt():
        _prepare_todo(todo, cfg, out_dir, workers, record, bar)
    bar.close()
    manifest["cases"] = sorted(entries.values(), key=lambda e: e["id"])
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def _prepare_todo(todo: list[Case], cfg: PrepConfig, out_dir: Path, workers: int, record, bar) -> None:
    import os

    if workers <= 1 or len(todo) <= 1:
        if todo:
            _init_worker()
        for case in todo:
            record(_prepare_one(case, cfg, out_dir))
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)

        def done(entry: dict) -> None:
            record(entry)
            bar.update()

        # A worker that dies (the OOM killer, a crash in native code) breaks the whole pool: every case
        # it still held comes back unprepared, and the pool's other workers are killed too, perhaps
        # mid-write. Each case is retried alone, so only a case that kills its own worker fails.
        for case in _prepare_in_pool(todo, cfg, out_dir, workers, threads, done):
            _remove_partial_writes(out_dir, case)  # the pool is gone: nobody writes these any more
            for lost in _prepare_in_pool([case], cfg, out_dir, 1, threads, done):
                folder = lost.images[0].parent
                msg = f"{folder}: the worker process preparing {lost.id} died (out of memory?); not prepared"
                _remove_partial_writes(out_dir, lost)
                done({"id": lost.id, "status": "error", "error": msg, "errors": [msg]})


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler, `timeout`) stops prep as Ctrl-C does: workers killed, manifest whole."""
    import signal

    def interrupt(*_) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # (signals go to the main thread)
        yield
        return
    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _remove_orphaned_writes(out_dir: Path) -> None:
    """Temporary `.pt` files (seg.data.store.atomic_write: `.<name>.<pid>.<hex>.tmp`) of processes that
    are gone: a prep killed mid-write (SIGKILL, a crash) leaves one per case it was writing."""
    import os

    for tmp in out_dir.glob(".*.pt.*.tmp"):
        pid = tmp.name.rsplit(".", 3)[-3]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError):  # not our name, or a live process of another user
            pass
