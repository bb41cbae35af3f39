"""`segbench report --compare`: verdicts per case, regressions, kernels and time that moved."""

import json

import pytest
from report_runs import run_segbench, write_run

from reports.compare import attention_kernel_changes, compare_rows, profile_changes
from reports.tables import load_results


def test_compare_flags_a_synthetic_regression(tmp_path):
    before = write_run(tmp_path / "before")
    after = write_run(tmp_path / "after")
    rows = [json.loads(line) for line in (after / "results.jsonl").read_text().splitlines()]
    for r in rows:
        if r["variant"] == "bf16+compile":  # 25 % slower
            r["step_times_s"] = [s * 1.25 for s in r["step_times_s"]]
            r["s_per_iter"] = {k: v * 1.25 if k != "n" else v for k, v in r["s_per_iter"].items()}
            r["attention_kernels"] = {"cudnn": 24}  # and its attention went to another kernel
            r["profile"] = {"device": "cuda", "ms_per_step_by_category": {"attention": 30.0, "matmul": 10.02}}
        if r["variant"] == "fp32":  # 1 % slower: under the threshold
            r["step_times_s"] = [s * 1.01 for s in r["step_times_s"]]
            r["attention_kernels"] = {"efficient": 24}  # unchanged
    (after / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows_b = [json.loads(line) for line in (before / "results.jsonl").read_text().splitlines()]
    for r in rows_b:
        if r["variant"] in ("bf16+compile", "fp32"):
            r["attention_kernels"] = {"efficient": 24}
        if r["variant"] == "bf16+compile":
            r["profile"] = {"device": "cuda", "ms_per_step_by_category": {"attention": 12.5, "matmul": 10.0,
                                                                          "copies": 1.0}}
    (before / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_b))
    table = compare_rows(load_results(after), load_results(before)).set_index("variant")
    assert table.loc["bf16+compile", "verdict"] == "REGRESSION"
    assert table.loc["bf16+compile", "change"] == pytest.approx(0.25, abs=0.01)
    assert table.loc["fp32", "verdict"] == "no significant change"
    assert table.loc["fused_norm", "verdict"].startswith("status")

    proc = run_segbench("report", str(after), "--compare", str(before), "--fail-on-regression")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION train_step/bf16+compile" in proc.stdout
    assert "REGRESSION" in (after / "compare.md").read_text()
    assert attention_kernel_changes(rows, rows_b) == ["train_step/bf16+compile: efficient ×24 → cudnn ×24"]
    assert "train_step/bf16+compile: efficient ×24 → cudnn ×24" in (after / "compare.md").read_text()
    assert "data:image/png;base64," in (after / "compare.html").read_text()
    # where the time moved: attention +17.5 ms, copies gone; matmul's 0.02 ms is under the floor
    moved = profile_changes(rows, rows_b)
    assert moved[["category", "before ms/step", "after ms/step", "change ms/step"]].values.tolist() == [
        ["attention", "12.50", "30.00", "+17.50"], ["copies", "1.00", "0.00", "-1.00"]
    ]
    line = "| train_step | bf16+compile | attention | 12.50 | 30.00 | +17.50 |"
    assert line in (after / "compare.md").read_text()


def test_compare_footprint_estimates_by_their_peak():
    def est(variant: str, gib: float) -> dict:
        return {"workload": "swin", "kind": "footprint", "variant": variant, "status": "ok", "estimate": True,
                "estimated_peak_bytes": int(gib * 2**30)}

    before = [est("bf16", 9.38), est("bf16+swin_fast", 2.97), est("seed", 5.22)]
    after = [est("bf16", 9.40), est("bf16+swin_fast", 3.50), est("seed", 4.00)]
    table = compare_rows(after, before).set_index("variant")
    assert table.loc["bf16", "verdict"] == "no significant change"  # +0.2 %
    assert table.loc["bf16+swin_fast", "verdict"] == "REGRESSION"  # +18 %
    assert table.loc["seed", "verdict"] == "improvement"
    assert table.loc["bf16+swin_fast", "change"] == pytest.approx(3.50 / 2.97 - 1)
    assert table.loc["bf16+swin_fast", "after"] == "3.50 GiB est. peak"


def test_compare_counts_a_case_that_now_fails_as_a_regression_and_takes_an_empty_run():
    case = {"workload": "w", "variant": "v"}
    ok = {**case, "status": "ok", "s_per_iter": {"median": 0.1}, "step_times_s": [0.1] * 5}
    failed = {**case, "status": "error", "error": "OutOfMemoryError: CUDA out of memory"}
    table = compare_rows([failed], [ok]).set_index("variant")
    assert table.loc["v", "verdict"] == "REGRESSION" and table.loc["v", "after"] == "error"
    assert compare_rows([ok], [failed]).set_index("variant").loc["v", "verdict"] == "status error → ok"
    empty = compare_rows([], [])
    assert empty.empty and (empty.verdict == "REGRESSION").sum() == 0


def test_compare_gives_no_verdict_on_cases_of_another_shape():
    case = {"workload": "w", "variant": "v", "status": "ok"}
    big = {**case, "shape": [128, 128, 128], "s_per_iter": {"median": 0.2}, "step_times_s": [0.2] * 5}
    small = {**case, "shape": [32, 32, 32], "s_per_iter": {"median": 0.01}, "step_times_s": [0.01] * 5}
    verdict = compare_rows([big], [small]).verdict.iloc[0]
    assert verdict.startswith("not comparable: shape [32, 32, 32] → [128, 128, 128]")


def test_compare_gives_no_verdict_across_machines_and_reads_loaders_by_their_rate():
    case = {"workload": "w", "variant": "v", "status": "ok", "s_per_iter": {"median": 0.1}}
    before, after = {**case, "step_times_s": [0.1] * 8}, {**case, "step_times_s": [0.2] * 8}
    assert compare_rows([after], [before]).verdict.iloc[0] == "REGRESSION"
    other = compare_rows([after], [before], machines=("NVIDIA H200, torch 2.11", "NVIDIA H100, torch 2.11"))
    assert other.verdict.iloc[0] == ("other machine (NVIDIA H100, torch 2.11 → NVIDIA H200, torch 2.11): "
                                     "no verdict")
    assert other.change.iloc[0] == pytest.approx(1.0)  # the change is still shown
    same = compare_rows([after], [before], machines=("NVIDIA H100, torch 2.11",) * 2)
    assert same.verdict.iloc[0] == "REGRESSION"
    # a loader's waits come in bursts: its rate (the mean wait) moved 1 %, its median wait doubled
    loader = {"workload": "d", "variant": "workers:8", "status": "ok", "kind": "dataloader",
              "s_per_iter": {"median": 0.01}}
    bursty_b = {**loader, "step_times_s": [0.0, 0.0, 0.0, 0.4] * 4}
    bursty_a = {**loader, "step_times_s": [0.0, 0.0, 0.004, 0.4] * 4}
    row = compare_rows([bursty_a], [bursty_b]).iloc[0]
    assert row.change == pytest.approx(0.01) and row.verdict == "no significant change"
    assert (row.before, row.after) == ("mean 100.00 ms", "mean 101.00 ms")  # what the change is of
    # failing where it ran before is no regression of the code when the machine changed too
    failed = {**case, "status": "error", "error": "CUDA out of memory"}
    other = compare_rows([failed], [before], machines=("NVIDIA L4, torch 2.11", "NVIDIA H100, torch 2.11"))
    assert other.verdict.iloc[0] == ("status ok → error on another machine (NVIDIA L4, torch 2.11): "
                                     "no verdict")
    assert compare_rows([failed], [before]).verdict.iloc[0] == "REGRESSION"


def test_compare_gives_no_verdict_to_a_case_the_time_budget_cut_but_counts_a_timeout_of_its_own():
    case = {"workload": "w", "variant": "v"}
    ok = {**case, "status": "ok", "s_per_iter": {"median": 0.1}, "step_times_s": [0.1] * 5}
    not_run = {**case, "status": "error", "error": "not run: the suite's time budget of 520 s was spent"}
    stopped = {**case, "status": "error", "error": "timeout: the suite's time budget of 520 s ran out 35 s "
                                                   "into the case (its own limit: 900 s)"}
    own = {**case, "status": "error", "error": "timeout: the case ran past its 900 s limit"}
    assert compare_rows([not_run], [ok]).verdict.iloc[0] == "cut by the time budget in RUN: no verdict"
    assert compare_rows([stopped], [ok]).verdict.iloc[0] == "cut by the time budget in RUN: no verdict"
    assert compare_rows([ok], [stopped]).verdict.iloc[0] == "cut by the time budget in RUN_B: no verdict"
    assert compare_rows([own], [ok]).verdict.iloc[0] == "REGRESSION"


def test_compare_flags_losses_that_went_non_finite_whatever_the_speed(tmp_path):
    case = {"workload": "w", "variant": "bf16", "status": "ok", "s_per_iter": {"median": 0.1}}
    before = {**case, "step_times_s": [0.1] * 8}
    nan = {**case, "step_times_s": [0.08] * 8, "warning": "non-finite loss in the first 3 steps: [nan]"}
    assert compare_rows([nan], [before]).verdict.iloc[0] == "REGRESSION (non-finite loss)"
    assert compare_rows([before], [nan]).verdict.iloc[0] == "losses finite now (were not): no speed verdict"
    assert compare_rows([nan], [nan]).verdict.iloc[0] == "non-finite loss in both: no verdict"
    other = compare_rows([nan], [before], machines=("NVIDIA H200, torch 2.11", "NVIDIA H100, torch 2.11"))
    assert other.verdict.iloc[0].endswith("no verdict")
    # and --fail-on-regression fails on it
    before_run, after_run = write_run(tmp_path / "before"), write_run(tmp_path / "after")
    rows = [json.loads(line) for line in (after_run / "results.jsonl").read_text().splitlines()]
    faster = next(r for r in rows if r["status"] == "ok" and r.get("step_times_s"))
    faster["step_times_s"] = [t * 0.8 for t in faster["step_times_s"]]
    faster["warning"] = nan["warning"]
    (after_run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_segbench("report", str(after_run), "--compare", str(before_run), "--fail-on-regression")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"REGRESSION {faster['workload']}/{faster['variant']}" in proc.stdout


def test_compare_gives_no_verdict_on_loaders_of_another_sample_shape_and_names_every_machine_of_a_run():
    from reports.rows import machine

    loader = {"workload": "dataloader", "variant": "workers:1", "status": "ok", "kind": "dataloader",
              "s_per_iter": {"median": 0.01}, "batch": 2}
    small = {**loader, "sample_shape": [4, 64, 64, 64], "step_times_s": [0.01] * 8}
    big = {**loader, "sample_shape": [4, 128, 128, 128], "step_times_s": [0.1] * 8}
    assert compare_rows([big], [small]).verdict.iloc[0].startswith("not comparable: sample_shape")
    env = {"cpu": "EPYC", "cpu_count": 16, "versions": {"torch": "2.11.0"},
           "calibration": {"gpu": "NVIDIA H100"}}
    assert machine(env) == "NVIDIA H100, torch 2.11.0"
    resumed = {**env, "resumed": [{"calibration": {"gpu": gpu}} for gpu in ("NVIDIA H200", "NVIDIA H100")]}
    assert machine(resumed) == "NVIDIA H100 + NVIDIA H200, torch 2.11.0"
    cpu = {"cpu": "EPYC", "cpu_count": 2, "versions": {"torch": "2.13.0"}}
    assert machine(cpu) == "EPYC × 2, torch 2.13.0"
    assert machine({**cpu, "calibration": {"torch_threads": 1}}) == "EPYC × 2, 1 torch threads, torch 2.13.0"


def test_compare_gives_no_verdict_on_footprints_of_another_step_or_overlap():
    est = {"workload": "swin", "kind": "footprint", "variant": "bf16", "status": "ok", "estimate": True,
           "estimated_peak_bytes": 2**30}
    train, infer = {**est, "estimated_step": "train"}, {**est, "estimated_step": "infer"}
    assert compare_rows([infer], [train]).verdict.iloc[0].startswith("not comparable: estimated_step")
    a, b = {**est, "overlap": 0.5}, {**est, "overlap": 0.25}
    assert compare_rows([a], [b]).verdict.iloc[0].startswith("not comparable: overlap")


def test_compare_names_any_set_up_difference_the_rows_record_in_their_params():
    """A model width, an lr or a blending mode differs: no verdict on the timing, the difference named."""
    row = {"workload": "swin", "kind": "infer", "variant": "bf16", "status": "ok",
           "s_per_iter": {"median": 1.0, "p20": 1.0, "p80": 1.0, "n": 5}, "step_times_s": [1.0] * 5,
           "params": {"model": "swinunetr", "model_options": {"feature_size": 24}, "mode": "gaussian"}}
    wider = {**row, "s_per_iter": {**row["s_per_iter"], "median": 2.0}, "step_times_s": [2.0] * 5,
             "params": {**row["params"], "model_options": {"feature_size": 48}, "mode": "constant"}}
    verdict = compare_rows([wider], [row]).verdict.iloc[0]
    assert verdict == ("not comparable: mode gaussian → constant, model_options {'feature_size': 24} → "
                       "{'feature_size': 48}")
    assert compare_rows([{**wider, "params": row["params"]}], [row]).verdict.iloc[0] == "REGRESSION"
    # the shape a loader measured still counts beside equal params; an ANCHORS note does not
    loader = {**row, "kind": "dataloader", "sample_shape": [4, 32, 32, 32]}
    bigger = {**wider, "kind": "dataloader", "params": row["params"], "sample_shape": [4, 128, 128, 128]}
    assert compare_rows([bigger], [loader]).verdict.iloc[0].startswith("not comparable: sample_shape")
    est = {"workload": "fit", "kind": "footprint", "variant": "bf16", "status": "ok", "estimate": True,
           "estimated_peak_bytes": 10 * 2**30, "params": {"model": "swinunetr", "anchor_peak_gib": {}}}
    noted = {**est, "estimated_peak_bytes": 20 * 2**30,
             "params": {**est["params"], "anchor_peak_gib": {"bf16": 18}}}
    assert compare_rows([noted], [est]).verdict.iloc[0] == "REGRESSION"


def test_compare_gives_no_verdict_on_timings_taken_on_a_busy_host():
    row = {"workload": "w", "kind": "train_step", "variant": "bf16", "status": "ok",
           "s_per_iter": {"median": 1.0, "p20": 1.0, "p80": 1.0, "n": 5}, "step_times_s": [1.0] * 5}
    slow = {**row, "s_per_iter": {**row["s_per_iter"], "median": 3.0}, "step_times_s": [3.0] * 5}
    assert compare_rows([slow], [row]).verdict.iloc[0] == "REGRESSION"
    busy = {**slow, "host_other_cpu_fraction": 0.5}
    assert compare_rows([busy], [row]).verdict.iloc[0] == (
        "busy host (50% in RUN of the CPUs used by other processes): no verdict")


def test_footprint_estimates_of_another_torch_get_no_verdict():
    est = {"workload": "fit", "kind": "footprint", "variant": "bf16", "status": "ok", "estimate": True,
           "estimated_peak_bytes": 9 * 2**30}
    grown = {**est, "estimated_peak_bytes": 10 * 2**30}
    machines = ("EPYC × 2, torch 2.13.0", "EPYC × 2, torch 2.11.0")
    assert compare_rows([grown], [est], machines=machines).verdict.iloc[0].startswith("other machine")
    assert compare_rows([grown], [est]).verdict.iloc[0] == "REGRESSION"


def test_a_faster_row_whose_parity_broke_is_a_regression_not_an_improvement(tmp_path):
    def row(seconds: float, dev: float | None, variant: str = "bf16") -> dict:
        return {"workload": "w", "variant": variant, "status": "ok", "s_per_iter": {"median": seconds},
                "step_times_s": [seconds * (1 + 0.001 * i) for i in range(8)],
                "parity": {"reference": "fp32", "max_rel_dev": dev}}

    after = [row(0.3, 0.4), row(0.1, 3e-6, "fp32"), row(0.3, None, "fused")]
    before = [row(0.5, 2e-4), row(0.1, 1e-7, "fp32"), row(0.5, 2e-4, "fused")]
    table = compare_rows(after, before).set_index("variant")
    assert table.loc["bf16", "verdict"] == "REGRESSION (parity 2.0e-04 → 4.0e-01); speed: improvement"
    assert table.loc["fp32", "verdict"] == "no significant change"  # 30x, but far under 1e-3
    assert table.loc["fp32", "parity"] == "1.0e-07 → 3.0e-06"
    assert table.loc["fused", "verdict"].startswith("REGRESSION (parity 2.0e-04 → non-finite)")
    other = compare_rows([row(0.3, 0.4)], [row(0.5, 2e-4)], machines=("H200", "H100")).verdict.iloc[0]
    assert other.endswith("no verdict; parity worse (2.0e-04 → 4.0e-01)")

    before, after = write_run(tmp_path / "before"), write_run(tmp_path / "after", scale=0.8)
    rows = [json.loads(line) for line in (after / "results.jsonl").read_text().splitlines()]
    for r in rows:
        if r["workload"] == "train_step" and r["variant"] == "bf16":
            r["parity"]["max_rel_dev"] = 0.5
    (after / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_segbench("report", str(after), "--compare", str(before), "--fail-on-regression")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    md = (after / "compare.md").read_text()
    assert "parity (deviation from fp32 eager)" in md and "REGRESSION (parity 1.0e-03 → 5.0e-01)" in md


def test_gradients_that_went_wrong_under_unchanged_losses_are_a_parity_regression():
    def row(grad: float) -> dict:
        return {"workload": "w", "variant": "v", "status": "ok", "s_per_iter": {"median": 0.1},
                "step_times_s": [0.1] * 8, "parity": {"max_rel_dev": 1e-4, "grad_rel_dev": grad}}

    verdict = compare_rows([row(1.4)], [row(1e-2)]).verdict.iloc[0]
    assert verdict == ("REGRESSION (parity 1.0e-04 → 1.0e-04; grad 1.0e-02 → 1.4e+00); "
                       "speed: no significant change")
    assert compare_rows([row(2e-2)], [row(1e-2)]).verdict.iloc[0] == "no significant change"
