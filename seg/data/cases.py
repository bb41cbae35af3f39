"""Find BraTS cases below a folder and check them before any work is done.

Two layouts are recognised, by file name suffix:
- BraTS 2021: ``<id>_t1 _t1ce _t2 _flair [_seg]`` with labels {0,1,2,4};
- BraTS 2023: ``<id>-t1n -t1c -t2w -t2f [-seg]`` with labels {0,1,2,3}.
A case without a seg file is an image-only case. Validation reads every file with nibabel and
returns one message per problem, each naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")

# File suffix per modality (in MODALITIES order, then seg) and label set, per naming convention.
SUFFIXES = {
    "2021": ("_t1", "_t1ce", "_t2", "_flair", "_seg"),
    "2023": ("-t1n", "-t1c", "-t2w", "-t2f", "-seg"),
}
LABELS = {"2021": (0, 1, 2, 4), "2023": (0, 1, 2, 3)}

_PATTERNS = {
    conv: re.compile(r"^(?P<id>.+?)(?P<suffix>" + "|".join(map(re.escape, sfx)) + r")(?P<ext>\.nii(\.gz)?)$")
    for conv, sfx in SUFFIXES.items()
}

# Affines of modalities of one case may differ by float rounding of the header (sform stored as
# float32); anything above this (in mm, per affine entry) is a different grid.
AFFINE_ATOL_MM = 1e-3


@dataclass(frozen=True)
class Case:
    """One BraTS case: its id, the expected modality files (t1, t1ce, t2, flair), seg or None."""

    id: str
    images: tuple[Path, Path, Path, Path]
    seg: Path | None
    convention: str  # "2021" or "2023": naming and label set
    duplicates: tuple[Path, ...] = ()  # a second file for one of its modalities (.nii beside .nii.gz)

    @property
    def files(self) -> list[Path]:
        return [*self.images, *([self.seg] if self.seg else [])]

    @property
    def labels(self) -> tuple[int, ...]:
        return LABELS[self.convention]

    def images_only(self) -> Case:
        """The case without its seg file, nor a second copy of it: what inference reads."""
        seg_name = f"{self.id}{SUFFIXES[self.convention][4]}.nii"
        kept = tuple(d for d in self.duplicates if not d.name.startswith(seg_name))
        return dataclasses.replace(self, seg=None, duplicates=kept)


def nifti_files(root: Path) -> list[Path]:
    """Every `*.nii*` file below `root`, sorted."""
    # os.walk follows symlinked folders (datasets are often linked in); rglob does not
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        found += [Path(folder) / n for n in names if ".nii" in n.lower()]  # (.NII.GZ: named as ignored)
    return sorted(p for p in found if p.is_file())


def discover(root: str | Path) -> list[Case]:
    """All cases below `root`, sorted by id. A case is found from any one of its files, so a
    missing modality shows up in `validate` (its expected path does not exist)."""
    groups: dict[tuple[Path, str, str], dict[str, Path]] = defaultdict(dict)
    exts: dict[tuple[Path, str, str], str] = {}
    duplicates: dict[tuple[Path, str, str], list[Path]] = defaultdict(list)
    for path in nifti_files(Path(root)):
        for conv, pattern in _PATTERNS.items():
            m = pattern.match(path.name)
            if m:
                key = (path.parent, m["id"], conv)
                if m["suffix"] in groups[key]:  # (sorted: x.nii before x.nii.gz, which is kept)
                    duplicates[key].append(groups[key][m["suffix"]])
                groups[key][m["suffix"]] = path
                exts.setdefault(key, m["ext"])
                break
    cases = []
    for key, found in groups.items():
        parent, case_id, conv = key
        sfx = SUFFIXES[conv]
        images = tuple(found.get(s, parent / f"{case_id}{s}{exts[key]}") for s in sfx[:4])
        cases.append(Case(case_id, images, found.get(sfx[4]), conv, tuple(duplicates.get(key, ()))))
    return sorted(cases, key=lambda c: (c.id, str(c.images[0])))


def unmatched_nifti(root: str | Path) -> list[Path]:
    """The NIfTI files below `root` that `discover` does not take (not named as a BraTS case's file)."""
    return [p for p in nifti_files(Path(root)) if not any(pat.match(p.name) for pat in _PATTERNS.values())]


def no_cases_reason(root: str | Path) -> str:
    """Why `discover(root)` found nothing, in one line naming `root`."""
    root = Path(root)
    if not root.exists():
        return f"{root}: no such file or folder"
    if (root / "manifest.json").is_file() or any(root.glob("*.pt")) or (root / "index.json").is_file():
        return (f"{root}: a prepared folder (`segbench data prep` output); this takes the raw NIfTI cases "
                "it was prepared from")
    return f"{root}: no BraTS cases found (expected *_t1.nii.gz ... or *-t1n.nii.gz ... files)"


def _read(path: Path, errors: list[str]):
    """(nibabel image, data array) or None, appending the reason to `errors`."""
    import nibabel as nib

    if not path.exists():
        errors.append(f"{path}: missing file")
        return None
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for "not a NIfTI"
        errors.append(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})")
        return None
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # EOFError / zlib.error / OSError for truncated or corrupt data
        errors.append(f"{path}: truncated or corrupt image data ({type(err).__name__}: {err})")
        return None
    return img, data


def validate(case: Case) -> list[str]:
    """Problems that stop `case` from being prepared; empty when it is fine."""
    return read_validated(case)[0]


def read_validated(case: Case) -> tuple[list[str], dict[str, object]]:
    """(problems, images): `validate`'s problems, and every file read as an in-memory nibabel image
    keyed by path string, so preparing the case does not decompress its files a second time."""

    errors = [f"{dup}: {case.id} has this file as both .nii and .nii.gz: keep one"
              for dup in case.duplicates]
    images: dict[str, object] = {}
    grids: list[tuple[Path, tuple[int, ...], np.ndarray]] = []  # every readable 3-D file
    for name, path in zip((*MODALITIES, "seg"), case.files, strict=False):
        read = _read(path, errors)
        if read is None:
            continue
        img, data = read
        # the same header and affine over the array just decompressed (scaling already applied)
        images[str(path)] = type(img)(data, img.affine, img.header)
        if data.ndim != 3:
            errors.append(f"{path}: image is {data.ndim}-D with shape {tuple(data.shape)}; expected 3-D")
            continue
        grids.append((path, data.shape, img.affine))
        if name == "seg":
            errors.extend(_label_errors(path, data, case))
        elif data.dtype.kind == "f" and not np.isfinite(data).all():
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            errors.append(f"{path}: {bad} non-finite voxel values (NaN/Inf)")
        elif not data.any():  # an export that filled a missing sequence with zeros
            errors.append(f"{path}: every voxel is 0 (an empty {name} sequence)")
    return _grid_errors(grids) + errors, images


def _same_grid(a: tuple, b: tuple) -> bool:
    return a[1] == b[1] and np.allclose(a[2], b[2], atol=AFFINE_ATOL_MM, rtol=0)


def _grid_errors(grids: list[tuple[Path, tuple[int, ...], np.ndarray]]) -> list[str]:
    """One message per file off the grid most files share (ties: the earliest file's), so a
    single odd modality is the one named, whichever channel it is."""
    if not grids:
        return []
    ref = max(grids, key=lambda g: sum(_same_grid(g, o) for o in grids))
    errors = []
    for path, shape, affine in grids:
        if shape != ref[1]:
            errors.append(f"{path}: grid {tuple(shape)} differs from {ref[0].name} {tuple(ref[1])}")
        elif not _same_grid((path, shape, affine), ref):
            dev = float(np.abs(affine - ref[2]).max())
            errors.append(f"{path}: affine differs from {ref[0].name} by up to {dev:.4g} mm (different grid)")
    return errors


def _label_errors(path: Path, data: np.ndarray, case: Case) -> list[str]:
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            return [f"{path}: non-finite label values (NaN/Inf)"]
        if not np.array_equal(data, np.round(data)):
            return [f"{path}: non-integer label values"]
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi > 255:
        values = [v for v in (lo, hi) if v not in case.labels]
    else:
        counts = np.bincount(data.astype(np.uint8, copy=False).ravel(), minlength=256)
        values = [int(v) for v in np.flatnonzero(counts) if v not in case.labels]
    if values:
        return [f"{path}: label values {values} outside the BraTS {case.convention} set {list(case.labels)}"]
    return []
