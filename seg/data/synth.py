"""Synthetic BraTS-like cases: the embedded default data (real BraTS cannot be downloaded here).

A skull-stripped brain phantom in the BraTS geometry (default 240x240x155, 1 mm, LPS affine,
int16 images, uint8 labels {0,1,2,4}) with white/grey matter, sulci, ventricles and deep grey
nuclei, and one glioma per case: a necrotic core (1) inside an enhancing ring (4) inside edema
(2), of random shape, size and position. Each modality has its own contrast (edema bright in
FLAIR/T2, ring bright in T1ce, core dark in T1).

Made so that a model has to learn: tissue texture, tumour heterogeneity, edema that fades into
normal tissue at its border, a smooth bias field per modality, Rician noise and partial volume,
and look-alikes that defeat one threshold per modality (T1ce-bright choroid plexus and midline
sinus, FLAIR/T2-bright white-matter lesions, T2-bright CSF next to a T2-bright necrotic core).
Deterministic: case i of seed s depends only on (s, i), and the files are byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BRATS_SHAPE = (240, 240, 155)
MODALITY_SUFFIXES = ("t1", "t1ce", "t2", "flair")

# Tissue codes of the phantom and their mean intensity relative to white matter, per modality
# (rows: t1, t1ce, t2, flair) -- roughly the relative contrasts of clinical glioma MRI.
BG, WM, GM, CSF, VESSEL, WMH, EDEMA, NECROSIS, ENHANCING = range(9)
CONTRAST = np.array([
    # bg   WM    GM    CSF   vessel WMH  edema necro enhancing
    [0.0, 1.00, 0.72, 0.30, 0.75, 0.85, 0.70, 0.40, 0.78],  # t1: core dark
    [0.0, 1.00, 0.72, 0.30, 1.50, 0.85, 0.72, 0.42, 1.45],  # t1ce: ring and vessels bright
    [0.0, 0.55, 0.80, 1.60, 0.90, 1.15, 1.25, 1.55, 0.95],  # t2: edema, core and CSF bright
    [0.0, 0.65, 0.85, 0.25, 0.70, 1.20, 1.35, 0.75, 1.05],  # flair: edema bright, CSF dark
], dtype=np.float32)


def brats_affine(shape) -> np.ndarray:
    """The LPS 1 mm affine of real BraTS files (x and y flipped, origin at voxel (0, Y-1, 0))."""
    return np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, shape[1] - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def _smooth_noise(rng: np.random.Generator, shape, cell_vox: float) -> np.ndarray:
    """Zero-mean, unit-std random field varying over about `cell_vox` voxels."""
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    # white noise on a grid twice as fine as the cell, blurred there: smooth enough that the
    # trilinear upsampling leaves no visible facets
    step = max(cell_vox / 2, 1.0)
    coarse = [max(4, int(np.ceil(s / step)) + 3) for s in shape]
    z = gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.5, mode="wrap")
    up = F.interpolate(torch.from_numpy(z)[None, None], size=tuple(shape), mode="trilinear",
                       align_corners=True)[0, 0].numpy()
    return (up - up.mean()) / (up.std() + 1e-6)


def _radius(shape, center, axes) -> np.ndarray:
    """Normalised ellipsoid radius sqrt(sum(((x - c) / a)^2)) at every voxel (float32)."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    r2 = sum(((g.astype(np.float32) - c) / a) ** 2 for g, c, a in zip(grids, center, axes, strict=True))
    return np.sqrt(r2, dtype=np.float32)


def _paint_balls(tissue: np.ndarray, where: np.ndarray, centers, radii, code: int) -> None:
    """Set `tissue` to `code` inside each ball (voxel centre, radius in voxels), within `where`."""
    for c, r in zip(centers, radii, strict=True):
        lo = [max(0, int(np.floor(ci - r))) for ci in c]
        hi = [min(s, int(np.ceil(ci + r)) + 1) for ci, s in zip(c, tissue.shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        local_shape = [b - a for a, b in zip(lo, hi, strict=True)]
        local = _radius(local_shape, [ci - a for ci, a in zip(c, lo, strict=True)], [r, r, r]) <= 1.0
        sel = local & where[box]
        tissue[box][sel] = code


def _anatomy(rng: np.random.Generator, shape):
    """Normal brain: (tissue codes, brain mask, brain semi-axes, brain centre), in voxels."""
    shape = tuple(shape)
    scale = float(np.mean(np.array(shape) / np.array(BRATS_SHAPE)))
    center = (np.array(shape) - 1) / 2 + rng.uniform(-0.02, 0.02, 3) * np.array(shape)
    axes = np.array(shape) * np.array([0.30, 0.355, 0.42]) * rng.uniform(0.92, 1.04, 3)
    rho = _radius(shape, center, axes) + 0.05 * _smooth_noise(rng, shape, 40 * scale)
    brain = rho < 1.0
    depth = np.clip(1.0 - rho, 0.0, 1.0)

    tissue = np.where(brain, WM, BG).astype(np.uint8)
    gyri = _smooth_noise(rng, shape, max(2.0, 9 * scale))
    cortex = brain & (depth < 0.13 + 0.05 * gyri)
    tissue[cortex] = GM
    tissue[cortex & (_smooth_noise(rng, shape, max(2.0, 6 * scale)) > 1.3)] = CSF  # sulci
    for side in (-1, 1):
        c = center + np.array([side * 0.30, 0.0, -0.08]) * axes
        nuclei = _radius(shape, c, 0.17 * axes * [1, 1.2, 1])
        tissue[brain & (nuclei < 1.0)] = GM
    ventricle_axes = axes * np.array([0.09, 0.38, 0.16]) * rng.uniform(0.8, 1.25)
    ventricles = np.zeros(shape, bool)
    for side in (-1, 1):
        c = center + np.array([side * 0.11, -0.02, 0.10]) * axes
        ventricles |= _radius(shape, c, ventricle_axes) < 1.0
        # choroid plexus: a T1ce-bright tuft inside each lateral ventricle
        _paint_balls(tissue, brain, [c + np.array([0, -0.5, -0.3]) * ventricle_axes],
                     [max(1.5, 0.35 * ventricle_axes[0] * 2)], VESSEL)
    tissue[ventricles & brain & (tissue != VESSEL)] = CSF
    # periventricular caps: patchy FLAIR/T2-bright white matter around the ventricles
    shell = np.zeros(shape, bool)
    for side in (-1, 1):
        r = _radius(shape, center + np.array([side * 0.11, -0.02, 0.10]) * axes, ventricle_axes * 1.5)
        shell |= r < 1.0
    tissue[shell & (tissue == WM) & (_smooth_noise(rng, shape, max(2.0, 8 * scale)) > 0.3)] = WMH
    # superior sagittal sinus / falx, and cortical veins: T1ce-bright like the enhancing ring
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    midline = (np.abs(grids[0] - center[0]) < max(1.0, 2.5 * scale)) & (grids[2] > center[2])
    tissue[brain & midline & (depth < 0.09)] = VESSEL
    veins = _smooth_noise(rng, shape, max(2.0, 7 * scale))
    tissue[brain & (depth < 0.05) & (np.abs(veins) < 0.12)] = VESSEL
    # white-matter hyperintensities: FLAIR/T2-bright blobs that are not tumour
    n_wmh = int(rng.integers(6, 16))
    where_wm = tissue == WM
    idx = np.flatnonzero(where_wm & (depth > 0.2))
    picks = rng.choice(idx, size=min(n_wmh, idx.size), replace=False) if idx.size else []
    centers = [np.array(np.unravel_index(i, shape), dtype=float) for i in picks]
    radii = list(rng.uniform(max(1.5, 2 * scale), max(2.0, 7 * scale), len(centers)))
    _paint_balls(tissue, where_wm, centers, radii, WMH)
    return tissue, brain, axes, center


def _tumour(rng: np.random.Generator, shape, brain, axes, center):
    """(seg labels in {0,1,2,4}, edema contrast weight in [0.35, 1]) for one glioma in `brain`."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    shape = tuple(shape)
    for _ in range(100):
        offset = rng.uniform(-0.5, 0.5, 3) * axes
        c_wt = center + offset
        if np.linalg.norm(offset / axes) < 0.55:
            break
    mean_axis = float(np.mean(axes))
    r_wt = max(rng.uniform(0.28, 0.45) * mean_axis, 10.0)  # not tiny at small --shape
    r_core = max(rng.uniform(0.42, 0.6) * r_wt, 5.0)
    wt_axes = r_wt * rng.uniform(0.8, 1.2, 3)
    d_wt = _radius(shape, c_wt, wt_axes) + 0.22 * _smooth_noise(rng, shape, 0.7 * r_wt)
    c_core = c_wt + rng.uniform(-0.2, 0.2, 3) * r_wt
    d_core = _radius(shape, c_core, r_core * rng.uniform(0.85, 1.15, 3))
    d_core += 0.15 * _smooth_noise(rng, shape, 0.6 * r_core)
    ring_vox = max(2.5, rng.uniform(0.3, 0.55) * r_core)  # enhancing rim thickness
    nec = d_core < 1.0 - ring_vox / r_core + 0.08 * _smooth_noise(rng, shape, 0.4 * r_core)
    # edema always surrounds the core by a margin, as in real gliomas: so the core keeps that margin
    # from the brain's edge too (at small --shape the tumour reaches it), or it would touch background
    margin = max(2.0, 0.15 * r_core) / r_core
    inner = binary_erosion(brain, iterations=int(np.ceil(margin * r_core)) + 1)
    core = inner & (d_core < 1.0)
    whole = brain & ((d_wt < 1.0) | (d_core < 1.0 + margin))
    seg = np.zeros(shape, np.uint8)
    seg[whole] = 2
    seg[core] = 4
    necrosis = binary_erosion(core) & nec  # the ring keeps at least a voxel between necrosis and edema
    if core.any() and not necrosis.any():  # a core too small for its noisy necrosis (tiny --shape)
        # its deepest voxel: off the ring whenever the core has an inside
        depth = distance_transform_edt(core)
        necrosis = depth == depth.max()
        necrosis[tuple(np.argwhere(necrosis)[1:].T)] = False  # one voxel
    seg[necrosis] = 1
    strength = np.clip((1.0 - d_wt) / 0.3, 0.0, 1.0)  # edema contrast fades toward its border
    strength[d_core < 1.0 + margin] = 1.0
    return seg, 0.35 + 0.65 * strength


def synth_case(seed: int, index: int, shape=BRATS_SHAPE) -> tuple[list[np.ndarray], np.ndarray]:
    """One phantom: ([t1, t1ce, t2, flair] int16 arrays, seg uint8 in {0,1,2,4})."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, index])
    shape = tuple(int(s) for s in shape)
    scale = float(np.mean(np.array(shape) / np.array(BRATS_SHAPE)))
    for _ in range(20):  # redraw in the rare case a label got lost at the brain border
        tissue, brain, axes, center = _anatomy(rng, shape)
        seg, edema_strength = _tumour(rng, shape, brain, axes, center)
        if all(np.count_nonzero(seg == v) >= 20 for v in (1, 2, 4)):
            break
    contrast = CONTRAST * np.exp(rng.normal(0.0, 0.06, CONTRAST.shape)).astype(np.float32)
    texture = _smooth_noise(rng, shape, max(1.5, 4 * scale))
    hetero = _smooth_noise(rng, shape, max(2.0, 6 * scale))
    tumour = seg > 0
    images = []
    for m in range(4):
        lut = contrast[m]
        img = lut[tissue]
        edema = seg == 2
        img[edema] += (lut[EDEMA] - img[edema]) * edema_strength[edema]
        img[seg == 1] = lut[NECROSIS]
        img[seg == 4] = lut[ENHANCING]
        img *= 1.0 + 0.04 * texture
        img[tumour] *= 1.0 + 0.14 * hetero[tumour]
        img = gaussian_filter(img, 0.6)  # partial volume
        img *= np.exp(0.15 * _smooth_noise(rng, shape, 60 * scale))  # bias field
        sigma = rng.uniform(0.025, 0.045)
        noisy = np.hypot(img + sigma * rng.standard_normal(shape, np.float32),
                         sigma * rng.standard_normal(shape, np.float32))  # Rician magnitude
        wm_value = rng.uniform(300.0, 900.0)
        images.append(np.where(brain, np.clip(np.rint(noisy * wm_value), 1, 32767), 0).astype(np.int16))
    return images, seg


def write_cases(out: str | Path, n: int, seed: int = 0, shape=BRATS_SHAPE) -> list[Path]:
    """Write `n` cases as `out/BraTS2021_<5 digits>/BraTS2021_<id>_{t1,t1ce,t2,flair,seg}.nii.gz`.
    Returns the case folders."""
    import nibabel as nib
    from tqdm import tqdm

    from seg.data.store import save_nifti

    out = Path(out)
    affine = brats_affine(shape)
    folders = []
    for i in tqdm(range(n), desc="synth", unit="case"):
        case_id = f"BraTS2021_{i + 1:05d}"
        folder = out / case_id
        images, seg = synth_case(seed, i, shape)
        for suffix, data in (*zip(MODALITY_SUFFIXES, images, strict=True), ("seg", seg)):
            img = nib.Nifti1Image(data, affine)
            img.header.set_xyzt_units("mm", "sec")
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            save_nifti(folder / f"{case_id}_{suffix}.nii.gz", img)
        folders.append(folder)
    return folders
