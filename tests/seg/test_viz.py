"""Viewer and plots: headless PNGs, slice scrolling, overlays, training curves."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from seg.data.store import save_case
from seg.viz import SliceViewer, Volume, _axial, plot_curves, plot_overlay
from segbench.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path) -> np.ndarray:
    assert path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_MAGIC
    return mpimg.imread(path)


def _phantom(shape=(24, 20, 16)) -> Volume:
    rng = np.random.default_rng(0)
    image = rng.random((4, *shape), dtype=np.float32)
    label = np.zeros(shape, np.uint8)
    label[8:14, 6:12, 9:12] = 2
    label[10:12, 8:10, 10] = 3
    return Volume("phantom", image, label)


def test_view_raw_case_with_prediction(shared_data, tmp_path):
    case = shared_data / "brats2021" / "BraTS2021_90001"
    pred = shared_data / "brats2021-predictions" / "BraTS2021_90001_pred-yixinmpl20.nii.gz"
    one_row = _read_png(_run_view([str(case), "--slice", "80"], tmp_path / "a.png"))
    two_rows = _read_png(_run_view([str(case), "--pred", str(pred)], tmp_path / "b.png"))
    assert one_row.ndim == 3 and one_row.shape[1] == two_rows.shape[1]
    assert two_rows.shape[0] > one_row.shape[0]  # the prediction gets its own row of four panes


def _run_view(args, out):
    assert main(["view", *args, "--save", str(out)]) == 0
    return out


def test_view_saves_the_format_its_suffix_names(tmp_path):
    vol = _phantom()
    image, label = torch.from_numpy(vol.image), torch.from_numpy(vol.label)[None]
    save_case(tmp_path / "case.pt", image, label, {"id": "x"})
    assert main(["view", str(tmp_path / "case.pt"), "--save", str(tmp_path / "v.svg")]) == 0
    assert b"<svg" in (tmp_path / "v.svg").read_bytes()[:400]
    assert main(["view", str(tmp_path / "case.pt"), "--save", str(tmp_path / "v.pdf")]) == 0
    assert (tmp_path / "v.pdf").read_bytes()[:5] == b"%PDF-"


def test_view_prepared_pt(tmp_path):
    vol = _phantom()
    save_case(
        tmp_path / "case.pt", torch.from_numpy(vol.image), torch.from_numpy(vol.label)[None], {"id": "x"}
    )
    img = _read_png(_run_view([str(tmp_path / "case.pt")], tmp_path / "pt.png"))
    assert img.std() > 0.01  # not a blank canvas
    assert main(["view", str(tmp_path / "nothing-here"), "--save", str(tmp_path / "n.png")]) == 1


def test_view_of_a_broken_case_or_prediction_is_one_line(tmp_path, capsys):
    from seg.data.synth import write_cases

    case = write_cases(tmp_path / "raw", 1, shape=(24, 24, 16))[0]
    t2 = next(case.glob("*_t2.nii.gz"))
    blob = t2.read_bytes()
    pred = tmp_path / "pred.nii.gz"
    pred.write_bytes(blob[: len(blob) // 2])
    assert main(["view", str(case), "--pred", str(pred), "--save", str(tmp_path / "p.png")]) == 1
    assert f"{pred}: not a readable label map" in capsys.readouterr().err
    # an image (or a probability map) given as the prediction is not drawn as labels (uint8 wrapped
    # 257 to 1) but refused; an unknown --save format too
    assert main(["view", str(case), "--pred", str(t2), "--save", str(tmp_path / "p.png")]) == 1
    assert f"{t2}: not a label map (values " in capsys.readouterr().err
    assert main(["view", str(case), "--save", str(tmp_path / "p.bmpx")]) == 1
    assert "cannot write a .bmpx figure" in capsys.readouterr().err
    t2.write_bytes(blob[: len(blob) // 2])
    assert main(["view", str(case), "--save", str(tmp_path / "t.png")]) == 1
    assert f"{t2}: truncated" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists() and not (tmp_path / "p.png").exists()


def test_scroll_moves_the_slice_in_every_pane():
    vol = _phantom()
    viewer = SliceViewer(vol, slice_index=5, headless=True)
    assert len(viewer.images) == 4
    viewer.on_scroll(SimpleNamespace(button="up"))
    viewer.on_scroll(SimpleNamespace(button="up"))
    viewer.on_scroll(SimpleNamespace(button="down"))
    assert viewer.z == 6
    with pytest.raises(ValueError, match=f"--slice {vol.image.shape[-1]}: .* has axial slices 0.."):
        SliceViewer(vol, slice_index=vol.image.shape[-1], headless=True)
    for m, artist in enumerate(viewer.images):
        assert np.array_equal(artist.get_array(), _axial(vol.image[m], 6))
    viewer.show_slice(10)  # the ET slice: 36 tumour voxels, 4 of them enhancing (yellow)
    overlay = np.asarray(viewer.overlays[0].get_array())
    assert (overlay[..., 3] > 0).sum() == 36
    assert (np.all(np.isclose(overlay[..., :3], (1.0, 0.85, 0.0)), axis=-1)).sum() == 4
    viewer.on_key(SimpleNamespace(key="down"))
    assert viewer.z == 9
    viewer.show_slice(1000)
    assert viewer.z == vol.image.shape[-1] - 1
    depth = vol.image.shape[-1]  # the title numbers slices as --slice does, from 0
    assert f"axial slice {depth - 1} of 0–{depth - 1}" in viewer.fig._suptitle.get_text()
    assert "scroll" not in viewer.fig._suptitle.get_text()  # a saved picture cannot be scrolled
    assert [ax.get_title() for ax in viewer.fig.axes[:4]] == [
        f"{m} + reference" for m in ("T1", "T1ce", "T2", "FLAIR")
    ]


def test_plot_overlay_and_curves(tmp_path):
    vol = _phantom()
    pred = np.roll(vol.label, 1, axis=0)
    _read_png(
        plot_overlay(torch.from_numpy(vol.image), vol.label[None], torch.from_numpy(pred), tmp_path / "o.png")
    )
    # the prediction is drawn: another prediction, or none, gives another picture of the same slice
    same = _read_png(plot_overlay(vol.image, vol.label, vol.label, tmp_path / "same.png", slice_index=9))
    empty = _read_png(plot_overlay(vol.image, vol.label, 0 * vol.label, tmp_path / "empty.png",
                                   slice_index=9))
    shifted = _read_png(plot_overlay(vol.image, vol.label, pred, tmp_path / "shift.png", slice_index=9))
    assert same.shape == empty.shape == shifted.shape
    assert not np.array_equal(same, empty) and not np.array_equal(same, shifted)
    _read_png(plot_overlay(vol.image, None, pred, tmp_path / "o2.png", slice_index=3))
    log = tmp_path / "run" / "log.csv"
    log.parent.mkdir()
    log.write_text(
        "epoch,train_loss,val_loss,val_dice,seconds,val_dice_et,val_dice_tc,val_dice_wt\n"
        "1,1.2,1.1,0.3,5,0.2,0.3,0.4\n2,0.9,0.8,0.5,5,0.4,0.5,0.6\n"
    )
    img = _read_png(plot_curves(log, tmp_path / "curves.png"))
    assert img.shape[1] > img.shape[0]  # two panels side by side


def test_view_refuses_a_prediction_on_another_grid_of_the_same_shape(tmp_path, capsys):
    import nibabel as nib

    from seg.data.synth import write_cases

    case = write_cases(tmp_path / "raw", 1, shape=(24, 24, 16))[0]
    seg = nib.load(str(next(case.glob("*_seg.nii.gz"))))
    own = tmp_path / "own.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), seg.affine), str(own))
    assert main(["view", str(case), "--pred", str(own), "--save", str(tmp_path / "ok.png")]) == 0
    # the same labels saved from numpy with an identity affine: drawn mirrored before, refused now
    numpy_saved = tmp_path / "eye.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), np.eye(4)), str(numpy_saved))
    capsys.readouterr()
    assert main(["view", str(case), "--pred", str(numpy_saved), "--save", str(tmp_path / "no.png")]) == 1
    assert f"{numpy_saved}: not on the case's grid" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()


def test_a_prepared_case_is_drawn_with_its_voxels_to_scale(tmp_path):
    """A prepared case is its crop box resized to S³: voxels 2.5 x 3 mm in plane draw 1.2x taller."""
    from seg.viz import load_volume

    vol = _phantom((16, 16, 16))
    meta = {"id": "x", "size": 16, "crop_start": [0, 0, 0], "crop_end": [40, 48, 32]}
    save_case(tmp_path / "case.pt", torch.from_numpy(vol.image), torch.from_numpy(vol.label)[None], meta)
    volume = load_volume(tmp_path / "case.pt")
    assert volume.spacing_mm == (2.5, 3.0, 2.0)
    viewer = SliceViewer(volume, headless=True)
    aspects = [ax.get_aspect() for ax in viewer.fig.axes if ax.images]
    assert len(aspects) == 4 and aspects == pytest.approx([1.2] * 4)
    plain = tmp_path / "plain.pt"  # no crop box in meta: cubic voxels
    save_case(plain, torch.from_numpy(vol.image), torch.from_numpy(vol.label)[None], {"id": "y"})
    assert load_volume(plain).spacing_mm == (1.0, 1.0, 1.0)
