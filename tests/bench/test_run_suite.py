"""End to end on the CPU: `segbench bench` over a tiny suite with injected failures."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segbench",
            "bench",
            "--suite",
            str(HERE / "tiny_suite.toml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def rows(run: Path) -> dict[tuple[str, str], dict]:
    lines = (run / "results.jsonl").read_text().splitlines()
    return {(r["workload"], r["variant"]): r for r in map(json.loads, lines)}


def test_writes_every_contract_file(run):
    for name in ("results.jsonl", "env.json", "report.md", "report.html"):
        assert (run / name).is_file(), name
    assert list((run / "figures").glob("*.png"))
    env = json.loads((run / "env.json").read_text())
    for key in ("command", "cpu_count", "git", "versions", "calibration"):
        assert key in env
    assert env["versions"]["torch"] and env["versions"]["monai"]
    assert env["calibration"]["matmul_flops_per_s"] > 0 and env["calibration"]["copy_bytes_per_s"] > 0
    assert env["compile_cache"].startswith("cold")
    from reports.method import METHOD

    assert env["method"] == METHOD and f"- {METHOD[0]}" in (run / "report.md").read_text()


def test_rows_carry_the_contract_fields(run):
    r = rows(run)
    assert len(r) == 15
    for row in r.values():
        assert {"suite", "workload", "variant", "status"} <= set(row)
        assert row["status"] in ("ok", "error", "unavailable")
        assert row["status"] == "ok" or row["error"]
    step = r[("train_step", "bf16")]
    assert step["status"] == "ok"
    assert set(step["s_per_iter"]) == {"median", "p20", "p80", "n"} and step["s_per_iter"]["n"] == 3
    assert step["s_per_iter"]["p20"] <= step["s_per_iter"]["median"] <= step["s_per_iter"]["p80"]
    for key in ("samples_per_s", "voxels_per_s", "peak_bytes", "first_step_s", "flops_per_step", "mfu"):
        assert step[key] > 0, key
    # the derived rates reconcile with the median step and the calibration they are made of
    median, env = step["s_per_iter"]["median"], json.loads((run / "env.json").read_text())
    assert step["samples_per_s"] == pytest.approx(step["batch"] / median)
    assert step["voxels_per_s"] == pytest.approx(step["samples_per_s"] * math.prod(step["shape"]))
    matmul_rate = env["calibration"]["matmul_flops_per_s"]
    assert step["mfu"] == pytest.approx(step["flops_per_step"] / median / matmul_rate)
    assert step["parity"]["reference"] == "fp32" and step["parity"]["max_rel_dev"] < 0.05
    assert r[("train_step", "fp32")]["parity"]["max_rel_dev"] == 0.0  # same weights, batches, math
    assert r[("train_step", "fp32")]["parity"]["grad_rel_dev"] == 0.0  # and the first step's gradients
    assert 0 < step["parity"]["grad_rel_dev"] < 0.1 and step["parity"]["grad_tensors"] > 0
    # rows record their workload's set-up, less what its kind does not use (train_e2e's shape)
    assert step["params"]["shape"] == step["shape"] and step["params"]["model"] == "unet"
    assert "shape" not in r[("train_e2e", "fp32")]["params"]
    assert r[("dataloader", "workers:0")]["params"]["workers"] == 0  # the variant's count, not the default 2
    # each training workload's reference ran once, in a process of its own before its first case
    references = sorted(p.name for p in (run / "cases").glob("*-reference.result.json"))
    assert [name.split("-", 1)[1] for name in references] == ["train_step-fp32-reference.result.json",
                                                              "infer-fp32-reference.result.json"]
    # the inference reference's probabilities are cached beside its FLOPs, for every case of it
    assert (run / "cache" / "reference-infer.pt").is_file()
    assert json.loads((run / "cache" / "reference-infer.json").read_text())["flops_per_step"] > 0
    assert step["paired"]["baseline"] == "fp32" and step["paired"]["speedup"]["ratio"] > 0
    from reports.stats import paired_blocks_ratio_ci

    # speedup > 1: the variant faster (baseline time over variant time, over the block pairs)
    paired = step["paired"]
    assert paired["speedup"] == paired_blocks_ratio_ci(paired["baseline_blocks_s"],
                                                       paired["variant_blocks_s"])
    if sys.platform.startswith("linux"):  # how busy the host was meanwhile (bench.contention)
        assert 0.0 <= step["host_other_cpu_fraction"] <= 1.0
    # the case's wall time by phase, in order, inside the case's own wall time; the report tabulates it
    phases = step["phase_s"]
    assert list(phases) == ["setup", "first_step", "parity", "timing", "paired", "profile",
                            "attention_kernels"]
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) < step["case_wall_s"]
    assert phases["first_step"] >= step["first_step_s"] * 0.9  # (perf_counter around the timed call)
    # and in the case log as they end: a case killed by its timeout writes no row, its log says how far
    assert f"phase first_step: {phases['first_step']:.1f} s" in (run / step["log"]).read_text()
    report = (run / "report.md").read_text()
    assert "## Case time by phase (s)" in report and "| train_step/bf16 |" in report


def test_failures_become_error_rows_and_the_suite_goes_on(run):
    r = rows(run)
    assert r[("train_step", "fail:boom")]["status"] == "error"
    assert r[("train_step", "fail:boom")]["error"] == "RuntimeError: boom"
    assert "died" in r[("train_step", "fail:crash")]["error"]
    assert "timeout" in r[("hang", "fail:hang")]["error"]
    assert r[("infer", "fp32")]["status"] == "ok"  # after the failures


def test_variants_that_cannot_run_on_a_cpu_are_unavailable(run):
    r = rows(run)
    for key in (
        ("train_step", "tf32"),
        ("train_step", "fused_norm"),
        ("norm_kernel", "fused_norm"),
        ("train_step", "ckpt"),
    ):
        assert r[key]["status"] == "unavailable", key


def test_every_workload_kind_measures(run):
    r = rows(run)
    e2e = r[("train_e2e", "fp32")]
    assert e2e["verdict"] in ("input-bound", "compute-bound")
    assert 0 <= e2e["wait_fraction"] <= 1 and e2e["data_wait_s"]["n"] == 3
    loader = r[("dataloader", "workers:0")]
    assert loader["samples_per_s"] > 0 and loader["mb_per_s"] > 0
    # the rate and the per-batch times reconcile: samples/s = batch / mean wait
    assert loader["samples_per_s"] * loader["mean_s_per_batch"] == pytest.approx(loader["batch"])
    times = loader["step_times_s"]
    assert loader["mean_s_per_batch"] == pytest.approx(sum(times) / len(times))
    # timing starts after the workers' first wave (here the suite's warm-up of 1 is below it)
    assert loader["warmup_batches"] == 2 * loader["workers"] + 2 and e2e["warmup_steps"] >= 2
    norm = r[("norm_kernel", "fp32")]
    assert norm["forward_gb_per_s"] > 0 and norm["parity"]["max_rel_dev"] == 0.0
    infer = r[("infer", "fp32")]
    assert infer["samples_per_s"] > 0 and infer["parity"]["max_abs_err"] == 0.0
    assert infer["parity"]["max_rel_dev"] == 0.0  # the contract's parity field, as every workload
    # the attention-kernel record ran (a UNet makes no SDPA call) and did not fail
    step_rows = [row for (workload, _), row in r.items() if workload in ("train_step", "infer")
                 and row["status"] == "ok"]
    assert step_rows and all(row.get("attention_kernels") == {} for row in step_rows)


def test_profiled_rows_say_where_the_time_went(run):
    """measure.profile_steps: a torch.profiler trace per ok step case, in its row and the report."""
    r = rows(run)
    profiled = {key: row for key, row in r.items() if "profile" in row}
    assert set(profiled) == {
        ("train_step", v) for v in ("fp32", "bf16", "seed", "channels_last")
    } | {("infer", "fp32")}
    for (workload, variant), row in profiled.items():
        prof = row["profile"]
        folder = run / prof["dir"]
        assert folder.name == f"{workload}__{variant}"
        assert (folder / "trace.json.gz").is_file() and (folder / "summary.json").is_file()
        assert prof["device"] == "cpu" and prof["steps"] == 1 and prof["ms_per_step"] > 0
        assert prof["ms_per_step_by_category"]["convolution"] > 0  # a UNet
        assert prof["top_kernels"] and all(t["ms_per_step"] > 0 for t in prof["top_kernels"])
    assert "profile" not in r[("train_e2e", "fp32")]  # a workload without the setting
    md = (run / "report.md").read_text()
    assert "## Where the time goes (profiles)" in md and "| train_step__bf16 |" in md
    assert "Most time per profile" in md and "aten::convolution" in md


def test_report_shows_tables_verdict_parity_and_errors(run):
    md = (run / "report.md").read_text()
    assert "| variant | status |" in md and "parity" in md
    assert "compute-bound" in md or "input-bound" in md
    assert "RuntimeError: boom" in md and "unavailable" in md
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="figures' not in html


def test_a_device_that_cannot_run_leaves_no_run_behind(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", "bench", "--suite", str(HERE / "tiny_suite.toml"), "--out",
         str(out), "--device", "cuda"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert not (out / "results.jsonl").exists() and not (out / "env.json").exists()
    assert (out / "cases" / "calibrate.log").is_file()  # the one thing to read: why


@pytest.mark.parametrize("keep", ["0", "1"])
def test_each_case_compiles_with_empty_caches_unless_asked(tmp_path, monkeypatch, keep):
    from bench import runner

    seen = {}

    def fake_wait(spec_path, result_path, log_path, env, timeout_s):
        for key in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
            seen[key] = env.get(key)
            if env.get(key):
                assert not Path(env[key]).exists() or not any(Path(env[key]).iterdir())
        result_path.write_text(json.dumps({"status": "ok"}))
        return 0

    monkeypatch.setenv("SEGBENCH_KEEP_COMPILE_CACHE", keep)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setattr(runner, "_wait_case", fake_wait)
    fields = runner.run_case_process({"kind": "calibrate"}, tmp_path / "cases", "c", 10)
    assert fields["status"] == "ok"
    if keep == "1":  # the user's own caches (whatever their environment says)
        assert seen == {"TORCHINDUCTOR_CACHE_DIR": None, "TRITON_CACHE_DIR": None}
    else:
        inductor, triton = Path(seen["TORCHINDUCTOR_CACHE_DIR"]), Path(seen["TRITON_CACHE_DIR"])
        assert inductor.parent == triton.parent and not inductor.parent.exists()  # removed after


def test_profile_steps_flag_overrides_the_suite(tmp_path):
    from segbench.cli import main

    out = tmp_path / "run"
    suite = str(HERE / "tiny_suite.toml")
    assert main(["bench", "--suite", suite, "--out", str(out), "--only", "infer", "--profile-steps", "0",
                 "--no-report"]) == 0
    (row,) = rows(out).values()
    assert row["status"] == "ok" and "profile" not in row and not (out / "profiles").exists()
    assert main(["bench", "--suite", suite, "--out", str(tmp_path / "bad"), "--profile-steps", "-1"]) == 2
    assert not (tmp_path / "bad").exists()
    # --budget-s: a call of known length; the calibration alone spends a second's budget
    short = tmp_path / "short"
    assert main(["bench", "--suite", suite, "--out", str(short), "--only", "infer", "--budget-s", "1",
                 "--no-report"]) == 0
    (row,) = rows(short).values()
    assert row["error"] == "not run: the suite's time budget of 1 s was spent"
    assert main(["bench", "--suite", suite, "--out", str(tmp_path / "bad"), "--budget-s", "0"]) == 2


def test_a_reference_that_died_is_tried_once_per_workload(tmp_path, monkeypatch):
    from bench import runner

    calls = []

    def fake(spec, work, stem, timeout_s):
        calls.append(stem)
        if spec["kind"] == "calibrate":
            return {"status": "ok"}
        if spec.get("reference_only"):  # killed: no cached reference left behind
            return {"status": "error", "error": "case process died (killed by signal 9)"}
        return {"status": "error", "error": "not measured here"}

    monkeypatch.setattr(runner, "run_case_process", fake)
    runner.run_suite(HERE / "tiny_suite.toml", tmp_path / "run", only=["train_step/fp32", "train_step/bf16"],
                     report=False)
    assert [c for c in calls if c.endswith("-reference")] == ["000-train_step-fp32-reference"]


def test_an_inference_reference_is_computed_per_tta_setting(tmp_path):
    """The fp32 reference predicts with the case's TTA setting: a `tta` row against the workload's plain
    reference read a relative L2 of ~0.5 (another function, not a deviation)."""
    suite = tmp_path / "suite.toml"
    suite.write_text("""
name = "tta-ref"
device = "cpu"
reference = "fp32"
[measure]
warmup = 0
iters = 1
repeats = 2
block = 1
parity_steps = 1
profile_steps = 0
[[workload]]
kind = "infer"
model = "unet"
model_options = { channels = [4, 8], strides = [2], num_res_units = 1 }
volume = [16, 16, 16]
roi = [16, 16, 16]
variants = ["fp32", "tta"]
""")
    from bench.runner import run_suite

    out = tmp_path / "run"
    run_suite(suite, out, report=False)
    r = rows(out)
    assert r[("infer", "tta")]["parity"]["max_rel_dev"] == 0.0  # fp32 + TTA against fp32 + TTA
    assert r[("infer", "fp32")]["parity"]["max_rel_dev"] == 0.0
    assert {p.name for p in (out / "cache").glob("reference-*")} == {
        "reference-infer.json", "reference-infer.pt", "reference-infer+tta.json", "reference-infer+tta.pt"}
    from bench.case import reference_cached

    # a run folder carried without its .pt files (gpu_session.sh's run.tar.gz): computed again, not read
    (out / "cache" / "reference-infer.pt").unlink()
    cache = out / "cache"
    assert not reference_cached(cache, "infer", "infer") and reference_cached(cache, "infer+tta", "infer")
    assert reference_cached(out / "cache", "infer", "train_step")  # a trajectory is its JSON
    old = json.loads((cache / "reference-infer+tta.json").read_text())
    del old["tta"]  # made before references were kept per TTA setting: with either, so not used
    (cache / "reference-infer+tta.json").write_text(json.dumps(old))
    assert not reference_cached(cache, "infer+tta", "infer")
