"""Reading any prepared format, and converting between them.

Formats: `pt32` and `compact` (one `<id>.pt` per case, see seg.data.store) and `mmap` (a packed
folder, see seg.data.mmap_store). `open_reader(path)` gives one interface over them —
`read(case_id)` returns the case's tensors in their stored dtypes — and `materialize` makes a
folder in the format a loader wants from a folder in any other (cached, rebuilt when the
source changes).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from seg.data import mmap_store
from seg.data.splits import copy_splits
from seg.data.store import COMPACT, MANIFEST, PT32, load_case, save_case, write_json

MMAP = "mmap"
ALL_FORMATS = (PT32, COMPACT, MMAP)


class PtReader:
    """A prepared folder of `<id>.pt` files (pt32 or compact)."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)

    def path(self, case_id: str) -> Path:
        return self.data_dir / f"{case_id}.pt"

    def missing(self, ids: Sequence[str]) -> list[str]:
        return [self.path(i).name for i in ids if not self.path(i).is_file()]

    def has_label(self, case_id: str) -> bool:
        return "label" in load_case(self.path(case_id), mmap=True)

    def read(self, case_id: str) -> dict:
        """{"image", "label" (labelled cases)} tensors as stored; "meta" too."""
        return load_case(self.path(case_id))  # ValueError naming a truncated/foreign file

    def spatial_shape(self, case_id: str) -> tuple[int, ...]:
        return tuple(load_case(self.path(case_id), mmap=True)["image"].shape[1:])  # (mapped: not read)


class PackedReader:
    """A packed (memory-mapped) folder; tensors share nothing with the map (rows are copied)."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.store = mmap_store.PackedStore(data_dir)

    def missing(self, ids: Sequence[str]) -> list[str]:
        index = self.data_dir / mmap_store.INDEX
        return [f"{i} (not in {index})" for i in ids if i not in self.store.entries]

    def has_label(self, case_id: str) -> bool:
        return self.store.has_label(case_id)

    def spatial_shape(self, case_id: str) -> tuple[int, ...]:
        return tuple(self.store.shape[1:])  # every row has the folder's shape

    def read(self, case_id: str) -> dict:
        sample = {k: torch.from_numpy(v) for k, v in self.store.read(case_id).items()}
        sample["meta"] = self.store.entries[case_id]["meta"]
        return sample


def open_reader(path: str | Path) -> PtReader | PackedReader:
    return PackedReader(path) if mmap_store.is_packed(path) else PtReader(path)


def split_has_labels(reader: PtReader | PackedReader, ids: list[str], where: str | Path) -> bool:
    """Whether the cases `ids` are labelled; ValueError when some are and some are not (a training
    transform built for one kind would mishandle the other: labels left unaligned, or a KeyError)."""
    unlabelled = [i for i in ids if not reader.has_label(i)]  # one look per case (a .pt is opened)
    if unlabelled and len(unlabelled) < len(ids):
        raise ValueError(f"{where}: the split mixes labelled and image-only cases "
                         f"({len(unlabelled)} without a label, e.g. {unlabelled[0]})")
    return bool(ids) and not unlabelled


def storage_format(path: str | Path) -> str:
    """`mmap` for a packed folder, else the prepared manifest's format (pt32 when it names none)."""
    path = Path(path)
    if mmap_store.is_packed(path):
        return MMAP
    try:
        return json.loads((path / MANIFEST).read_text()).get("config", {}).get("format", PT32)
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{path / MANIFEST}: cannot read the prepared manifest ({err})") from None


def case_ids(path: str | Path) -> list[str]:
    """The readable cases of a prepared or packed folder."""
    if mmap_store.is_packed(path):
        return mmap_store.PackedStore(path).ids
    return mmap_store.prepared_ids(path)


def labelled_ids(path: str | Path) -> list[str]:
    """The labelled readable cases of a prepared folder (its manifest's) or a packed one (its index's)."""
    if mmap_store.is_packed(path):
        reader = PackedReader(path)
        return [i for i in reader.store.ids if reader.has_label(i)]
    return mmap_store.prepared_ids(path, labelled=True)


def _source_stamp(src: Path) -> str:
    if mmap_store.is_packed(src):
        files = [src / mmap_store.INDEX, src / mmap_store.IMAGES, src / mmap_store.LABELS]
    else:
        # a missing case file is not stamped: the case loop names it, and the others are converted
        cases = [src / f"{i}.pt" for i in mmap_store.prepared_ids(src)]
        files = [src / MANIFEST, *(p for p in cases if p.is_file())]
    return mmap_store.fingerprint(files)


def convert(src: str | Path, out: str | Path, fmt: str, progress: bool = True) -> Path:
    """Write the cases of `src` (any format) to `out` in `fmt`; skipped when `out` was converted
    from the same, unchanged source. Values are those of the source (fp16 rounding when the target
    is compact or mmap). A case that cannot be converted gets one stderr line; the others are."""
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if fmt not in ALL_FORMATS:
        raise ValueError(f"unknown prepared format {fmt!r}; expected one of {ALL_FORMATS}")
    if fmt == MMAP:
        if mmap_store.is_packed(src):
            raise ValueError(f"{src} is already packed (mmap); use it directly")
        mmap_store.pack(src, out, progress=progress)
        return out
    if out.resolve() == src.resolve():
        raise ValueError(f"{out}: the converted folder must not be its source")
    stamp = _source_stamp(src)
    done = out / MANIFEST
    made = {"path": str(src.resolve()), "fingerprint": stamp}
    if done.is_file():
        old = json.loads(done.read_text())
        made_from = (old.get("converted_from") or {}).get("path")
        if made_from != made["path"]:  # a prepared folder, or another source's copy: not ours to replace
            raise ValueError(f"{out} holds {'a conversion of ' + made_from if made_from else 'prepared data'}"
                             f", not of {src}: convert into a new folder")
        if old["converted_from"] == made and old.get("config", {}).get("format") == fmt:
            copy_splits(src, out)  # unchanged cases; the splits may have been re-made
            return out
        done.unlink()  # manifest first: a conversion stopped midway leaves no folder that looks done
    reader = open_reader(src)
    entries = []
    for case_id in tqdm(case_ids(src), desc=f"convert to {fmt}", unit="case", disable=not progress):
        try:
            case = reader.read(case_id)
            save_case(out / f"{case_id}.pt", case["image"], case.get("label"), case.get("meta", {}), fmt=fmt)
            entries.append({"id": case_id, "status": "ok", "file": f"{case_id}.pt",
                            "has_label": "label" in case})
        except Exception as err:  # one bad case never stops the others
            print(f"{src}: case {case_id}: cannot convert to {fmt}: {err}", file=sys.stderr)
            entries.append({"id": case_id, "status": "error", "error": str(err)})
    config = read_prep_config(src)
    copy_splits(src, out)  # the same splits: a training run on `out` sees the same cases
    write_json(done, {"config": {**config, "format": fmt}, "source": str(src.resolve()),
                      "converted_from": made, "cases": entries})
    return out


def read_prep_config(data_dir: str | Path) -> dict:
    """The prepared data's config (size, format, ...): manifest.json, or a packed folder's index."""
    data_dir = Path(data_dir)
    if mmap_store.is_packed(data_dir):
        return dict(mmap_store.PackedStore(data_dir).index.get("config", {}))
    manifest = data_dir / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not found; is {data_dir} a `segbench data prep` output?")
    return json.loads(manifest.read_text()).get("config", {})


def materialize(src: str | Path, fmt: str, cache_root: str | Path, progress: bool = True) -> Path:
    """`src` itself when it is already in `fmt`, else a converted copy under `cache_root` (named
    after the source's path, so one cache serves several sources)."""
    src = Path(src)
    if storage_format(src) == fmt:
        return src
    tag = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]
    return convert(src, Path(cache_root) / f"{src.name}-{tag}.{fmt}", fmt, progress=progress)
