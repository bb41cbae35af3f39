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

from dataclasses import asdict, dataclass, field

import numpy as np

from seg.data.cases import MODALITIES, Case
from seg.data.inverse import label_to_original, to_convention  # noqa: F401  (public API here)
from seg.data.store import FORMATS, PT32

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
