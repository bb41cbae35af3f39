"""The prepared-case file (`<case_id>.pt`) and atomic writes.

A `.pt` file is a plain dict loadable with ``torch.load(path, weights_only=True)``:
``image`` [4,S,S,S] in [0,1], ``label`` [1,S,S,S] in 0..3 (absent for image-only cases), ``meta``
(plain Python values). Two formats differ only in dtypes:
- ``pt32``: image float32, label int64 (what training code consumes without casts);
- ``compact``: image float16, label uint8 (about half / an eighth of the bytes).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PT32 = "pt32"
COMPACT = "compact"
FORMATS = (PT32, COMPACT)
MANIFEST = "manifest.json"


def _dtypes(fmt: str):
    import torch

    if fmt == PT32:
        return torch.float32, torch.int64
    if fmt == COMPACT:
        return torch.float16, torch.uint8
    raise ValueError(f"unknown prepared format {fmt!r}; expected one of {FORMATS}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`, so a
    reader never sees a half-written file and a crash leaves only the old file (or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per process and call; created by `write` itself, so it gets the usual permissions
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_nifti(path: str | Path, img) -> Path:
    """Write a nibabel image atomically; compression follows `path`'s suffix (.nii / .nii.gz)."""
    import nibabel as nib

    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"

    def write(tmp: Path) -> None:
        named = tmp.with_name(tmp.name + suffix)  # nibabel picks compression from the name
        try:
            nib.save(img, named)
            named.replace(tmp)
        finally:
            named.unlink(missing_ok=True)

    return atomic_write(path, write)


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def save_case(path: str | Path, image, label, meta: dict, fmt: str = PT32) -> Path:
    """Write one prepared case atomically; `label` may be None (image-only case)."""
    import torch

    image_dtype, label_dtype = _dtypes(fmt)
    obj = {"image": torch.as_tensor(image).to(image_dtype).contiguous(), "meta": dict(meta, format=fmt)}
    if label is not None:
        obj["label"] = torch.as_tensor(label).to(label_dtype).contiguous()
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_case(path: str | Path, mmap: bool = False) -> dict:
    """The dict saved by `save_case` (keys image, meta and, when labelled, label). `mmap=True`
    maps tensors from the file instead of reading them (cheap when only meta is needed).
    ValueError naming the file when it is not a readable prepared case."""
    import torch

    try:
        return torch.load(path, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as err:  # a truncated/foreign file: name it, not a pickle traceback
        raise ValueError(f"{path}: cannot read prepared case ({type(err).__name__}: {err})") from err
