"""`segbench footprint`: a one-workload footprint suite built from flags, run, and a fit verdict."""

from __future__ import annotations

from bench.commands import footprint_suite_toml
from bench.config import parse_suite
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
