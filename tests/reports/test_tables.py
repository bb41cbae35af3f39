"""reports.tables: results.jsonl -> one display table per workload, speedups recomputed from the
stored samples (paired, inverted, across processes), what is not quotable, bad result files."""


import pytest
from report_runs import run_segbench, write_run

from reports.tables import ResultsError, load_results, workload_table


def test_loader_supply_is_compared_with_steps_on_samples_of_its_shape():
    from reports.figures import matched_consumers

    supply = [{"sample_shape": [4, 128, 128, 128], "samples_per_s": 30.0}]
    demand = [{"variant": f"v{i}", "shape": shape, "samples_per_s": rate}
              for i, (shape, rate) in enumerate([([96, 96, 96], 50.0), ([128, 128, 128], 9.0),
                                                 ([128, 128, 128], 12.0), (None, 99.0)])]
    assert [r["variant"] for r in matched_consumers(supply, demand)[1]] == ["v2", "v1"]
    assert matched_consumers(supply, demand, top=1)[1][0]["variant"] == "v2"
    assert matched_consumers([{"sample_shape": [4, 64, 64, 64]}], demand)[1] == []
    # loaders of two shapes: the shape most of them deliver, its loaders and its consumers only
    mixed = supply * 2 + [{"sample_shape": [4, 96, 96, 96], "samples_per_s": 80.0}]
    loaders, consumers = matched_consumers(mixed, demand)
    assert len(loaders) == 2 and all(r["sample_shape"][1] == 128 for r in loaders)
    assert [r["variant"] for r in consumers] == ["v2", "v1"]


def test_table_quotes_paired_and_unpaired_speedups(tmp_path):
    run = write_run(tmp_path / "run")
    table = workload_table([r for r in load_results(run) if r["workload"] == "train_step"]).set_index(
        "variant"
    )
    assert table.loc["bf16", "vs seed"] == "1.22× [1.18–1.26]"  # paired: no mark
    assert table.loc["bf16+compile", "vs seed"].endswith("*")  # across processes: marked
    ratio = float(table.loc["bf16+compile", "vs seed"].split("×")[0])
    assert ratio == pytest.approx(0.169 / 0.074, rel=0.03)
    assert table.loc["fused_norm", "status"] == "unavailable"
    assert table.loc["seed", "vs seed"] == ""
    assert table.loc["bf16", "parity"] == "1.0e-03"
    assert table.loc["bf16+compile", "ANCHORS (H100, stock)"].startswith("74.00 ms (ours ×1.0")


def test_loader_table_says_what_its_times_and_rate_are():
    # workers deliver in bursts: a fast median wait, a slow mean; samples/s follows the mean
    times = [0.001, 0.001, 0.001, 0.097]
    row = {
        "workload": "dataloader", "kind": "dataloader", "variant": "workers:1", "status": "ok", "batch": 2,
        "s_per_iter": {"median": 0.001, "p20": 0.001, "p80": 0.04, "n": 4}, "step_times_s": times,
        "mean_s_per_batch": 0.025, "samples_per_s": 8 / 0.1, "workers": 1,
    }
    record = workload_table([row]).iloc[0]
    assert record["wait / batch (median [p20–p80])"].startswith("1.00 ms")
    assert record["mean wait / batch"] == "25.00 ms"
    assert record["samples/s (batch / mean wait)"] == "80.00"
    columns = list(workload_table([row]).columns)
    assert columns.index("mean wait / batch") == columns.index("wait / batch (median [p20–p80])") + 1
    old = {k: v for k, v in row.items() if k != "mean_s_per_batch"}  # a run from before the field
    assert workload_table([old]).iloc[0]["mean wait / batch"] == "25.00 ms"


def test_bad_results_line_names_file_and_line(tmp_path):
    run = write_run(tmp_path / "run")
    with open(run / "results.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ResultsError, match=r"results.jsonl:10: not JSON"):
        load_results(run)
    proc = run_segbench("report", str(run))
    assert proc.returncode == 2 and "results.jsonl:10" in proc.stderr
    # not a run folder: the message names results.jsonl, and nothing is created there
    from reports.build import build_report

    with pytest.raises(ResultsError, match=r"missing/results.jsonl: no such file"):
        build_report(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_a_speedup_over_a_row_paired_the_other_way_is_its_interleaved_ratio_inverted():
    from reports.tables import speedup

    fp32 = {"workload": "w", "variant": "fp32", "status": "ok", "step_times_s": [1.0] * 3}
    seed = {"workload": "w", "variant": "seed", "status": "ok", "step_times_s": [4.0] * 3,
            "paired": {"baseline": "fp32",
                       "speedup": {"ratio": 0.8, "ci_low": 0.5, "ci_high": 1.0, "pairs": 6}}}
    got = speedup(fp32, seed, "seed")
    assert got["paired"] and got["ratio"] == pytest.approx(1.25)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(1.0), pytest.approx(2.0))
    assert speedup(fp32, {**seed, "paired": {}}, "seed") == {"ratio": 4.0, "ci_low": None, "ci_high": None,
                                                            "paired": False}  # two processes' medians
    # a seed row of another workload (a goal's cross-workload case) paired with its own fp32: not ours
    other = {**seed, "workload": "big"}
    assert speedup(fp32, other, "big/seed") == {"ratio": 4.0, "ci_low": None, "ci_high": None,
                                                "paired": False}


def test_a_diverged_row_s_speedup_is_not_quoted_in_its_table_or_figure(tmp_path, monkeypatch):
    from reports import figures

    run = write_run(tmp_path / "run")
    rows = [r for r in load_results(run) if r["workload"] == "train_step"]
    by = {r["variant"]: r for r in rows}
    by["bf16+compile"]["warning"] = "non-finite loss in the first 3 steps: [2.3, nan, nan]"
    table = workload_table(rows).set_index("variant")
    cell = table.loc["bf16+compile", "vs seed"]
    assert cell.startswith("(") and cell.endswith("non-finite loss, not quotable)")
    assert table.loc["bf16", "vs seed"] == "1.22× [1.18–1.26]"  # the others keep theirs
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault(
        "labels", [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]))
    figures.speedups("train_step", rows, tmp_path)
    assert not any(label.startswith("bf16+compile") for label in drawn["labels"])
    assert any(label.startswith("bf16") for label in drawn["labels"])
    by["seed"]["warning"] = "non-finite loss in the first 3 steps: [nan, nan, nan]"  # the baseline diverged
    assert workload_table(rows).set_index("variant").loc["bf16", "vs seed"].endswith(
        "non-finite loss in seed, not quotable)")


def test_an_interval_from_before_block_pairs_is_marked_as_a_bootstrap():
    from reports.tables import fmt_speedup

    assert fmt_speedup({"ratio": 1.2, "ci_low": 1.1, "ci_high": 1.3, "paired": True, "pairs": 8}) == (
        "1.20× [1.10–1.30]")
    assert fmt_speedup({"ratio": 1.2, "ci_low": 1.1, "ci_high": 1.3, "paired": True}) == "1.20× [1.10–1.30]ᵇ"


def test_a_second_row_of_one_case_is_refused_naming_both_lines(tmp_path):
    run = write_run(tmp_path / "run")
    lines = (run / "results.jsonl").read_text().splitlines()
    (run / "results.jsonl").write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(ResultsError, match=rf"results.jsonl:{len(lines) + 1}: a second row of "
                                           r"train_step/fp32 \(the first is line 2\)"):
        load_results(run)


def test_a_small_kernel_bandwidth_keeps_its_significant_figures():
    row = {"workload": "norm", "kind": "norm_kernel", "variant": "bf16", "status": "ok", "order": 0,
           "forward_s": {"median": 1e-4}, "backward_s": {"median": 2e-4},
           "forward_gb_per_s": 0.0437, "backward_gb_per_s": 123.456}
    table = workload_table([row])
    assert table["fwd GB/s"].tolist() == ["0.0437"] and table["bwd GB/s"].tolist() == ["123.5"]
    gpu = workload_table([{**row, "forward_gb_per_s": 2345.64}])  # an H100's rates: no exponent form
    assert gpu["fwd GB/s"].tolist() == ["2345.6"]
