"""`segbench data prep` over a folder: every case below it validated, prepared (seg.data.prep's
eight steps) and saved as `<id>.pt`, with manifest.json (one entry per case, errors included) and
splits kept. Cases already prepared with the same config and unchanged sources are skipped; workers
run cases in a process pool, a worker killed mid-case costs only that case, and Ctrl-C / SIGTERM stop
at once with the manifest describing every `.pt` left.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from seg.data.cases import Case
from seg.data.prep import PrepConfig, prepare_case
from seg.data.store import MANIFEST


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
        ours = isinstance(prev, dict) and isinstance(prev.get("cases", []), list)
        why = "" if ours else "another tool's file"
    except json.JSONDecodeError as err:
        why = f"unreadable JSON ({err})"
    if why:
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
