"""`RandForegroundCropd`: foreground oversampling (as nnU-Net draws it) as a MONAI dictionary transform.

With probability `fg_fraction` the patch is centred (then kept inside the volume) on a voxel of a
foreground class drawn first; otherwise its corner is drawn as RandSpatialCropd draws it. All draws
come from the transform's own RandomState (`seg.data.augment.foreground_corner`), so
`Compose.set_random_state` makes them reproducible and seg.data.batch_augment replays them on the
device. A sample without a label, or without foreground, gets the uniform corner. The crop is a
plain slice: it records no MONAI crop operation, so it cannot be inverted (nothing here inverts
training crops).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import MapTransform, Randomizable

from seg.data.augment import foreground_corner


class RandForegroundCropd(Randomizable, MapTransform):
    def __init__(self, keys: Sequence[str], roi_size: Sequence[int], fg_fraction: float,
                 label_key: str = "label"):
        MapTransform.__init__(self, keys)
        self.roi_size, self.fg_fraction, self.label_key = tuple(roi_size), fg_fraction, label_key

    def randomize(self, data=None) -> None:  # the draws depend on the label: made in __call__
        pass

    def __call__(self, data):
        d = dict(data)
        spatial = tuple(d[self.keys[0]].shape[1:])
        label = d.get(self.label_key)
        corner = foreground_corner(self.R, spatial, self.roi_size, self.fg_fraction,
                                   None if label is None else label[0])
        box = (slice(None), *(slice(c, c + min(edge, p))
                              for c, edge, p in zip(corner, spatial, self.roi_size, strict=True)))
        for key in self.key_iterator(d):
            d[key] = d[key][box]
        return d
