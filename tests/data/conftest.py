"""Fixtures for seg.data: small synthetic cases and bad inputs built from the real MRI."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

MODS_2021 = ("t1", "t1ce", "t2", "flair")
SMALL_SHAPE = (48, 48, 32)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """Two small synthetic cases (BraTS 2021 layout), written once per session."""
    from seg.data.synth import write_cases

    root = tmp_path_factory.mktemp("synth_small")
    write_cases(root, 2, seed=3, shape=SMALL_SHAPE)
    return root


def _link_case(src_dir: Path, src_id: str, dst_dir: Path, dst_id: str, skip=()) -> None:
    """Symlink a real 2021 case under a new id (no copying of the big files)."""
    dst_dir.mkdir(parents=True)
    for m in (*MODS_2021, "seg"):
        if m not in skip:
            (dst_dir / f"{dst_id}_{m}.nii.gz").symlink_to(src_dir / f"{src_id}_{m}.nii.gz")


def _write_like(ref: Path, out: Path, data: np.ndarray, affine=None) -> None:
    img = nib.load(str(ref))
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(out))


@pytest.fixture(scope="session")
def bad_src(shared_data, tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """A source folder holding one good real case, one image-only 2023 case and one broken case
    per kind of bad input, all made from the real files. Returns (folder, {case_id: (file name
    named in the error, words the error must contain)})."""
    real = shared_data / "brats2021" / "BraTS2021_90001"
    rid = "BraTS2021_90001"
    root = tmp_path_factory.mktemp("bad_src")
    expect: dict[str, tuple[str, str]] = {}

    _link_case(real, rid, root / "good", "BraTS2021_10000")
    (root / "image_only").symlink_to(shared_data / "brats2023" / "BraTS-GLI-00001-000")

    cid = "BraTS2021_10001"  # truncated .gz: the header reads, the data does not
    _link_case(real, rid, root / cid, cid, skip=("t2",))
    blob = (real / f"{rid}_t2.nii.gz").read_bytes()
    (root / cid / f"{cid}_t2.nii.gz").write_bytes(blob[: len(blob) // 2])
    expect[cid] = (f"{cid}_t2.nii.gz", "truncated")

    cid = "BraTS2021_10002"  # not a NIfTI at all
    _link_case(real, rid, root / cid, cid, skip=("flair",))
    (root / cid / f"{cid}_flair.nii.gz").write_text("this is not an image\n")
    expect[cid] = (f"{cid}_flair.nii.gz", "not a readable NIfTI")

    cid = "BraTS2021_10003"  # a modality missing
    _link_case(real, rid, root / cid, cid, skip=("t1ce",))
    expect[cid] = (f"{cid}_t1ce.nii.gz", "missing file")

    cid = "BraTS2021_10004"  # the real native scans: each modality on its own grid
    (root / cid).mkdir()
    for m in MODS_2021:
        native = shared_data / "native" / f"TCGA-FG-6692_{m}_native.nii.gz"
        (root / cid / f"{cid}_{m}.nii.gz").symlink_to(native)
    expect[cid] = (f"{cid}_t2.nii.gz", "grid")

    cid = "BraTS2021_10005"  # same shape, affine shifted by 2 mm
    _link_case(real, rid, root / cid, cid, skip=("t2",))
    t2 = real / f"{rid}_t2.nii.gz"
    shifted = nib.load(str(t2)).affine.copy()
    shifted[0, 3] += 2.0
    _write_like(t2, root / cid / f"{cid}_t2.nii", np.asanyarray(nib.load(str(t2)).dataobj), shifted)
    expect[cid] = (f"{cid}_t2.nii", "affine differs")

    cid = "BraTS2021_10006"  # 4-D image
    _link_case(real, rid, root / cid, cid, skip=("t1",))
    t1 = real / f"{rid}_t1.nii.gz"
    _write_like(t1, root / cid / f"{cid}_t1.nii", np.asanyarray(nib.load(str(t1)).dataobj)[..., None])
    expect[cid] = (f"{cid}_t1.nii", "4-D")

    cid = "BraTS2021_10007"  # NaN in an image
    _link_case(real, rid, root / cid, cid, skip=("flair",))
    flair = real / f"{rid}_flair.nii.gz"
    data = np.asanyarray(nib.load(str(flair)).dataobj).astype(np.float32)
    data[120, 120, 70] = np.nan
    _write_like(flair, root / cid / f"{cid}_flair.nii", data)
    expect[cid] = (f"{cid}_flair.nii", "non-finite")

    cid = "BraTS2021_10008"  # label 3 does not exist in the 2021 convention
    _link_case(real, rid, root / cid, cid, skip=("seg",))
    seg = real / f"{rid}_seg.nii.gz"
    data = np.asanyarray(nib.load(str(seg)).dataobj).copy()
    data[data == 4] = 3
    _write_like(seg, root / cid / f"{cid}_seg.nii", data)
    expect[cid] = (f"{cid}_seg.nii", "label values [3]")

    cid = "BraTS2021_10009"  # truncated uncompressed .nii: nibabel's message holds a newline
    _link_case(real, rid, root / cid, cid, skip=("t2",))
    raw = gzip.decompress((real / f"{rid}_t2.nii.gz").read_bytes())
    (root / cid / f"{cid}_t2.nii").write_bytes(raw[: len(raw) // 2])
    expect[cid] = (f"{cid}_t2.nii", "truncated")

    cid = "BraTS2021_10010"  # a sequence the export filled with zeros
    _link_case(real, rid, root / cid, cid, skip=("t1ce",))
    t1ce = real / f"{rid}_t1ce.nii.gz"
    _write_like(t1ce, root / cid / f"{cid}_t1ce.nii", np.zeros(nib.load(str(t1ce)).shape, np.int16))
    expect[cid] = (f"{cid}_t1ce.nii", "every voxel is 0")

    cid = "BraTS2021_10011"  # t1 twice: as .nii.gz and as .nii (which one would be read?)
    _link_case(real, rid, root / cid, cid)
    _write_like(t1, root / cid / f"{cid}_t1.nii", np.asanyarray(nib.load(str(t1)).dataobj))
    expect[cid] = (f"{cid}_t1.nii", "both .nii and .nii.gz")
    return root, expect


@pytest.fixture(scope="session")
def bad_prepared(bad_src, tmp_path_factory):
    """`segbench data prep` run once over `bad_src` (size 32): (out dir, exit status, stderr)."""
    import contextlib
    import io

    from segbench.cli import main

    src, _ = bad_src
    out = tmp_path_factory.mktemp("bad_prepared")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["data", "prep", "--src", str(src), "--out", str(out), "--size", "32"])
    return out, rc, err.getvalue()


@pytest.fixture(scope="session")
def real_prepared(shared_data, tmp_path_factory):
    """The three labelled real cases prepared at the default size 128: {case_id: (Case, dict)}."""
    from seg.data.cases import discover
    from seg.data.prep import PrepConfig, prepare_case

    cfg = PrepConfig()
    return {c.id: (c, prepare_case(c, cfg)) for c in discover(shared_data) if c.seg is not None}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared pt32 folder of five 10³ cases (prepared_folders.write_prepared)."""
    from prepared_folders import write_prepared

    return write_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def formats(prepared, tmp_path_factory) -> dict[str, Path]:
    """`prepared` in each storage format: pt32, compact, mmap."""
    from seg.data.formats import materialize

    cache = tmp_path_factory.mktemp("formats")
    return {fmt: materialize(prepared, fmt, cache, progress=False) for fmt in ("pt32", "compact", "mmap")}
