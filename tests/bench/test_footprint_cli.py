"""`segbench footprint`: a one-workload footprint suite built from flags, run, and a fit verdict."""

from __future__ import annotations

from bench.commands import footprint_suite_toml
from bench.suite_file import parse_suite
from segbench.cli import main


def test_suite_toml_round_trips_model_options(tmp_path):
    text = footprint_suite_toml(
        "unet", {"channels": (4, 8), "strides": (2,), "norm": "instance", "dropout": 0.1}, [32, 32, 16], 2,
        ["bf16", "bf16+ckpt"],
    )
    suite = parse_suite(text, tmp_path / "suite.toml")
    (workload,) = suite.workloads
    assert workload.kind == "footprint" and workload.variants == ["bf16", "bf16+ckpt"]
    assert workload.params.model_options == {"channels": [4, 8], "strides": [2], "norm": "instance",
                                              "dropout": 0.1}
    assert workload.params.shape == [32, 32, 16] and workload.params.batch == 2


def test_tiny_unet_estimate_and_fit_verdict(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["footprint", "--model", "unet", "--model-option", "channels=(4,8)",
                 "--model-option", "strides=(2,)", "--shape", "32", "--gpu-gib", "1", "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("bf16 "))
    mib = float(line.split()[1]) * 1024
    assert 0.1 < mib < 64, line  # a few MiB of activations at 32³ with 4-8 channels
    assert "fits in 1 GiB" in line
    assert (run / "suite.toml").is_file() and (run / "report.md").is_file()


def test_bad_model_option_is_a_usage_error(tmp_path, capsys):
    code = main(["footprint", "--model", "unet", "--model-option", "nokey", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "key=value" in capsys.readouterr().err


def test_inference_estimate_holds_weights_and_one_window_batch(tmp_path, capsys):
    """--infer: one sliding-window batch without autograd — no gradients, no optimizer state, and
    less than a training step of the same batch; more windows per batch, more memory."""
    import json

    def estimate(*flags: str) -> dict:
        run = tmp_path / "-".join(flags or ("train",)).replace("-", "")
        code = main(["footprint", "--model", "dynunet", "--model-option", "filters=(8,16,32)",
                     "--model-option", "strides=(1,2,2)", "--shape", "32", *flags, "--out", str(run)])
        assert code == 0
        (row,) = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        return row

    train, infer1, infer2 = estimate(), estimate("--infer"), estimate("--infer", "--batch", "2")
    assert (train["estimated_step"], infer1["estimated_step"]) == ("train", "infer")
    assert "inference, 2 window(s) of 32x32x32" in capsys.readouterr().out
    by_category = infer1["estimated_bytes_by_category"]
    assert by_category.get("Gradient", 0) == 0 and by_category.get("Optstate", 0) == 0
    assert infer1["estimated_peak_phase"] == "forward"
    assert infer1["estimated_peak_bytes"] < train["estimated_peak_bytes"]
    assert infer2["estimated_peak_bytes"] > infer1["estimated_peak_bytes"]


def test_footprint_step_must_be_a_known_one(tmp_path):
    import pytest

    from bench.config import SuiteError

    text = footprint_suite_toml("unet", {}, [32, 32, 32], 1, ["bf16"], step="predict")
    with pytest.raises(SuiteError, match="step .predict.: choose train, infer, infer_volume"):
        parse_suite(text, tmp_path / "suite.toml")


def test_whole_volume_inference_estimate_adds_the_stitching_buffers(tmp_path, capsys):
    """--infer --volume: the whole sliding-window inference (MONAI's sliding window, called once per
    window batch) — more than one window batch by the volume's buffers; TTA's flips more again."""
    import json

    def rows(*flags: str) -> dict:
        run = tmp_path / "".join(flags).replace("-", "").replace(",", "_")
        code = main(["footprint", "--model", "unet", "--model-option", "channels=(4,8)",
                     "--model-option", "strides=(2,)", "--shape", "16", "--batch", "2", "--infer", *flags,
                     "--variant", "bf16", "--variant", "bf16+tta", "--out", str(run)])
        assert code == 0
        return {r["variant"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}

    window = rows()
    volume = rows("--volume", "48,40,24")
    assert window["bf16+tta"]["status"] == "unavailable"  # one window batch has no flips
    plain, tta = volume["bf16"], volume["bf16+tta"]
    assert plain["status"] == "ok" and plain["estimated_step"] == "infer_volume"
    assert plain["volume"] == [48, 40, 24]
    voxels = 48 * 40 * 24
    assert plain["estimated_bytes_by_category"]["Input"] == 4 * voxels * 4  # the fp32 volume
    # the window batch, plus at least the float32 output image (4 classes) being stitched
    assert plain["estimated_peak_bytes"] > window["bf16"]["estimated_peak_bytes"] + 4 * voxels * 4
    assert tta["estimated_peak_bytes"] > plain["estimated_peak_bytes"]
    assert "inference of a 48x40x24 volume" in capsys.readouterr().out


def test_volume_needs_infer_and_three_edges(tmp_path, capsys):
    assert main(["footprint", "--model", "unet", "--volume", "48,40,24", "--out", str(tmp_path / "a")]) == 2
    assert main(["footprint", "--model", "unet", "--infer", "--volume", "48,40", "--out",
                 str(tmp_path / "b")]) == 2
    assert "give X,Y,Z, with --infer" in capsys.readouterr().err


def test_whole_volume_estimate_counts_the_windows_its_overlap_makes(tmp_path):
    """More overlap, more windows: the estimated traffic and op count of one volume grow with it (the
    peak hardly moves: one window batch at a time)."""
    import json

    workloads = "".join(
        f'[[workload]]\nkind = "footprint"\nname = "o{int(overlap * 100)}"\nmodel = "unet"\n'
        'model_options = { channels = [4, 8], strides = [2] }\nshape = [16, 16, 16]\nbatch = 2\n'
        f'step = "infer_volume"\nvolume = [48, 40, 24]\noverlap = {overlap}\nvariants = ["bf16"]\n'
        for overlap in (0.0, 0.75))
    suite = tmp_path / "overlap.toml"
    suite.write_text(f'name = "overlap"\ndevice = "cpu"\n{workloads}')
    assert main(["bench", "--suite", str(suite), "--out", str(tmp_path / "run"), "--no-report"]) == 0
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    rows = {r["workload"]: r for r in map(json.loads, lines)}
    none, most = rows["o0"], rows["o75"]
    assert none["status"] == most["status"] == "ok"
    # 48x40x24 in 16³ windows: 3x3x2 = 18 windows without overlap; at 0.75 (a 4-voxel step) 9x7x3 = 189
    # windows, ~10x the forwards (measured 9.8x the ops, 8.8x the bytes: the volume's buffers are fixed)
    assert most["estimated_ops"] > 5 * none["estimated_ops"]
    assert most["estimated_bytes_moved"] > 5 * none["estimated_bytes_moved"]
