"""The memory-mapped prepared layout: one array file per array, packed from a prepared folder.

    DIR/images.npy   [N,4,S,S,S] float16  (.npy: np.load(..., mmap_mode="r") maps it)
    DIR/labels.npy   [N,1,S,S,S] uint8    (zeros in the rows of image-only cases)
    DIR/splits.json  copied from the prepared folder when it has one
    DIR/index.json   {"format": "mmap", "version": 1, "shape": [4,S,S,S], "rows": N,
                      "source": <prepared folder>, "fingerprint": <source files' sizes and times>,
                      "config": <the prepared manifest's config>,
                      "cases": [{"id", "row", "has_label", "meta"}], "errors": [{"id", "error"}]}

A reader maps the two files and copies one row per sample: no unpickling, no file opened per
case, and pages shared by every worker through the page cache (a DataLoader worker maps the
files itself; the store pickles without its arrays). Written with `pack` (`segbench data pack`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seg.data.splits import copy_splits
from seg.data.store import MANIFEST, load_case, write_json

INDEX = "index.json"
IMAGES = "images.npy"
LABELS = "labels.npy"
VERSION = 1


def is_packed(path: str | Path) -> bool:
    return (Path(path) / INDEX).is_file()


def prepared_ids(src: str | Path, labelled: bool = False) -> list[str]:
    """The cases a prepared folder's manifest lists as ok, in manifest order (`labelled`: only those
    with a label)."""
    path = Path(src) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{path}: cannot read the prepared folder's manifest ({err})") from None
    return [c["id"] for c in manifest["cases"]
            if c.get("status") == "ok" and (not labelled or c.get("has_label", True))]


def fingerprint(files: Sequence[Path]) -> str:
    """Names, sizes and modification times of `files`: changes when any of them is rewritten."""
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _plain_meta(meta: dict) -> dict:
    return json.loads(json.dumps(meta, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def pack(src: str | Path, out: str | Path, ids: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Pack prepared cases `ids` (default: every ok case of `src/manifest.json`) of a prepared
    folder (pt32 or compact) into the memory-mapped layout at `out`; returns the index.

    Skipped when `out` already holds the same cases packed from unchanged files. A case that
    cannot be read gets one stderr line naming its file and an entry in `errors`; the others are
    packed. The folder is built beside `out` and renamed into place, so `out` is whole or absent.
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ValueError(f"{out}: the packed folder must not be its source {src}")
    if out.exists() and not is_packed(out) and any(out.iterdir()):  # replaced as a whole: only a pack
        raise ValueError(f"{out} exists and is not a packed folder: pack into a new or packed folder")
    subset = ids is not None
    ids = list(prepared_ids(src) if ids is None else ids)
    files = [src / f"{i}.pt" for i in ids]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: prepared case missing ({len(missing)} of {len(ids)} missing)")
    if not ids:
        raise ValueError(f"{src}: no prepared case to pack")
    stamp = fingerprint(files)
    if is_packed(out):
        old = json.loads((out / INDEX).read_text())
        # sorted: cases that failed are listed apart, and readers look rows up by id
        packed = sorted([c["id"] for c in old["cases"]] + [e["id"] for e in old["errors"]])
        if old.get("fingerprint") == stamp and packed == sorted(ids) and old.get("version") == VERSION:
            copy_splits(src, out, ids if subset else None)
            return old
    config = json.loads((src / MANIFEST).read_text()).get("config", {}) if (src / MANIFEST).is_file() else {}

    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        images = labels = shape = None  # made once the first readable case gives the shape
        cases, errors = [], []
        bar = tqdm(ids, desc="pack", unit="case", disable=not progress)
        for case_id, path in zip(bar, files, strict=True):
            try:
                case = load_case(path)
                image = case["image"]
                if shape is None:
                    shape = list(image.shape)
                    images = np.lib.format.open_memmap(tmp / IMAGES, "w+", np.float16, (len(ids), *shape))
                    labels = np.lib.format.open_memmap(tmp / LABELS, "w+", np.uint8,
                                                       (len(ids), 1, *shape[1:]))
                if list(image.shape) != shape:
                    raise ValueError(f"image shape {list(image.shape)}, the others {shape}")
                row = len(cases)
                images[row] = image.numpy()  # numpy casts float32 -> float16 while copying
                if "label" in case:
                    labels[row] = case["label"].numpy()
                cases.append({"id": case_id, "row": row, "has_label": "label" in case,
                              "meta": _plain_meta(case.get("meta", {}))})
            except Exception as err:  # one bad case never stops the others
                said = str(err) if str(path) in str(err) else f"{path}: {err}"  # the file named once
                bar.write(f"cannot pack prepared case {case_id}: {said}", file=sys.stderr)
                errors.append({"id": case_id, "error": str(err)})
        if not cases:
            raise ValueError(f"{src}: none of {len(ids)} prepared cases could be packed")
        images.flush()
        labels.flush()
        del images, labels
        index = {"format": "mmap", "version": VERSION, "shape": shape, "rows": len(cases),
                 "source": str(src.resolve()), "fingerprint": stamp, "config": config,
                 "cases": cases, "errors": errors}
        copy_splits(src, tmp, ids if subset else None)  # so a packed folder can stand in for its source
        write_json(tmp / INDEX, index)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def _swap_in(tmp: Path, out: Path) -> None:
    # Two renames: readers see the old folder, the new one, or (for an instant) none.
    old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


class PackedStore:
    """Read access to a packed folder. Arrays are mapped on first use in each process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.index = json.loads((self.path / INDEX).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise FileNotFoundError(f"{self.path / INDEX}: cannot read the packed index ({err})") from None
        if self.index.get("version") != VERSION:
            raise ValueError(f"{self.path / INDEX}: packed layout version {self.index.get('version')}, "
                             f"this code reads {VERSION} (pack again)")
        self.entries = {c["id"]: c for c in self.index["cases"]}
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        # the arrays this index numbers: a re-pack swaps the folder, and a process that maps the new
        # arrays later (a DataLoader worker) would read other cases' rows through the old index
        self._packed = self._identity()

    def _identity(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            return tuple((st.st_ino, st.st_size, st.st_mtime_ns)
                         for st in (os.stat(self.path / name) for name in (IMAGES, LABELS)))
        except OSError:
            return None

    @property
    def ids(self) -> list[str]:
        return list(self.entries)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.index["shape"])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) as read-only memory maps."""
        if self._arrays is None:
            if self._identity() != self._packed:
                raise RuntimeError(f"{self.path}: packed again since this store was opened (its index "
                                   "numbers other arrays): open it again")
            self._arrays = (self._map(IMAGES), self._map(LABELS))
        return self._arrays

    def _map(self, name: str) -> np.ndarray:
        try:
            return np.load(self.path / name, mmap_mode="r")
        except (OSError, ValueError) as err:  # truncated or replaced: name the file
            raise RuntimeError(f"{self.path / name}: cannot map the packed array: {err}") from err

    def row(self, case_id: str) -> int:
        return self.entries[case_id]["row"]

    def has_label(self, case_id: str) -> bool:
        return self.entries[case_id]["has_label"]

    def read(self, case_id: str) -> dict:
        """{"image": float16 [4,S,S,S], "label": uint8 [1,S,S,S] when labelled} as numpy copies."""
        images, labels = self.arrays()
        row = self.row(case_id)
        sample = {"image": np.array(images[row])}
        if self.has_label(case_id):
            sample["label"] = np.array(labels[row])
        return sample

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # workers map the files themselves
