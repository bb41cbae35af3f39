"""Reports from hand-written result files: no torch, the report's sections, figures, pytest-benchmark
(tables and speedups: test_tables.py; goals: test_goals.py)."""

import json
import subprocess
import sys

from report_runs import run_segbench, write_run

from reports.tables import workload_table


def test_report_builds_without_torch(tmp_path):
    run = write_run(tmp_path / "run")
    code = (
        "import sys; from reports.build import build_report; build_report(sys.argv[1]); "
        "import reports.compare; "
        "assert 'torch' not in sys.modules, 'reports imported torch'; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('bench', 'seg')], 'reports imported bench'"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (run / "report.md").read_text()
    assert "NVIDIA H100" in md and "input-bound" in md
    for name in (
        "train_step_s_per_iter.png",
        "train_step_speedup.png",
        "train_step_memory.png",
        "loader_vs_compute.png",
        "norm_kernel_gbps.png",
    ):
        assert (run / "figures" / name).stat().st_size > 1000, name
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "RuntimeError: x" in html


def test_pytest_benchmark_json_folds_into_the_report(tmp_path):
    run = write_run(tmp_path / "run")
    bench = tmp_path / "micro.json"
    bench.write_text(
        json.dumps(
            {
                "machine_info": {"node": "box"},
                "benchmarks": [
                    {
                        "name": "test_dice_128",
                        "group": "metrics",
                        "stats": {
                            "min": 0.010,
                            "max": 0.014,
                            "mean": 0.012,
                            "median": 0.0118,
                            "q1": 0.011,
                            "q3": 0.0125,
                            "rounds": 20,
                            "ops": 83.3,
                        },
                    }
                ],
            }
        )
    )
    proc = run_segbench("report", str(run), "--pytest-benchmark", str(bench))
    assert proc.returncode == 0, proc.stderr
    md = (run / "report.md").read_text()
    assert "Micro-benchmarks" in md and "test_dice_128" in md and "11.800 ms" in md
    assert "pytest-benchmark, ran on box)" in md  # measured where pytest ran, not the Environment's machine
    from reports.pytest_bench import pytest_benchmark_table

    row = pytest_benchmark_table(bench).iloc[0]  # the interquartile range in order, and the minimum
    assert row["median [q1–q3]"] == "11.800 ms [11.000 ms–12.500 ms]" and row["min"] == "10.000 ms"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = run_segbench("report", str(run), "--pytest-benchmark", str(bad))
    assert proc.returncode == 2 and "not a pytest-benchmark JSON file" in proc.stderr
    no_median = tmp_path / "no_median.json"
    no_median.write_text(json.dumps({"benchmarks": [{"name": "t", "stats": {"min": 0.01, "q1": 0.01}}]}))
    proc = run_segbench("report", str(run), "--pytest-benchmark", str(no_median))
    assert proc.returncode == 2 and f"{no_median}: benchmark 1 has no usable stats" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_summary_flags_cases_run_on_a_busy_machine(tmp_path):
    from reports.build import build_report

    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rows[1]["host_other_cpu_fraction"] = 0.55  # fp32: another process took one of two cores
    rows[2]["host_other_cpu_fraction"] = 0.05  # bf16: quiet enough
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(run)
    flagged = [ln for ln in (run / "report.md").read_text().splitlines() if "machine was busy" in ln]
    assert len(flagged) == 1 and "train_step/fp32 55%" in flagged[0] and "bf16 " not in flagged[0]


def test_summary_names_non_finite_rows_and_env_names_the_cpu_bf16_workaround(tmp_path):
    from reports.build import build_report

    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rows[2]["warning"] = "non-finite loss in the first 3 steps: [2.3, nan, nan]"
    rows[2]["cpu_bf16_workaround"] = True  # the oneDNN line names the rows that ran with oneDNN off
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = json.loads((run / "env.json").read_text())
    env.setdefault("calibration", {})["cpu_bf16_conv3d_weight_grad_ok"] = False
    (run / "env.json").write_text(json.dumps(env))
    build_report(run)
    lines = (run / "report.md").read_text().splitlines()
    flagged = [ln for ln in lines if "non-finite loss" in ln and ln.startswith("- ")]  # the summary's
    assert len(flagged) == 1 and f"train_step/{rows[2]['variant']}:" in flagged[0]
    assert "do not quote its speed" in flagged[0]
    onednn = [ln for ln in lines if "wrong bf16 conv3d weight gradients" in ln]
    assert len(onednn) == 1 and f"train_step/{rows[2]['variant']} ran with oneDNN off" in onednn[0]
    del rows[2]["cpu_bf16_workaround"]  # an affected CPU is named even when no case needed the guard
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(run)
    onednn = [ln for ln in (run / "report.md").read_text().splitlines() if "wrong bf16 conv3d" in ln]
    assert len(onednn) == 1 and "no row of this run is marked as run with oneDNN off" in onednn[0]
    env["method"] = ["a run recent enough to mark its rows"]
    (run / "env.json").write_text(json.dumps(env))
    build_report(run)
    onednn = [ln for ln in (run / "report.md").read_text().splitlines() if "wrong bf16 conv3d" in ln]
    assert len(onednn) == 1 and "no case of this run convolved such a map" in onednn[0]
    for row in rows:  # a footprint run convolves nothing: no line
        row["estimate"] = True
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(run)
    assert "wrong bf16 conv3d" not in (run / "report.md").read_text()


def test_attention_kernels_are_named_per_variant_only_where_a_row_has_some(tmp_path):
    from reports.build import build_report

    run = write_run(tmp_path / "run")
    build_report(run)
    assert "Attention kernels" not in (run / "report.md").read_text()  # no row recorded any
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rows[0]["attention_kernels"] = {}  # e.g. stock MONAI in training: attention written out
    rows[2]["attention_kernels"] = {"efficient": 24, "math": 2}
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(run)
    lines = [ln for ln in (run / "report.md").read_text().splitlines() if "Attention kernels" in ln]
    assert len(lines) == 1 and "one training step" in lines[0]
    assert f"{rows[0]['variant']}: no SDPA call; {rows[2]['variant']}: efficient ×24, math ×2." in lines[0]
    env = json.loads((run / "env.json").read_text())
    env.setdefault("calibration", {})["sdpa_order"] = ["cudnn", "flash", "efficient", "math"]
    (run / "env.json").write_text(json.dumps(env))
    build_report(run)
    assert "attention tries, in order: cudnn > flash > efficient > math" in (run / "report.md").read_text()


def test_the_report_says_what_to_try_beside_a_failed_row(tmp_path):
    from bench.hints import hint_for
    from reports.build import build_report

    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rows[2] |= {"status": "error", "error": "InductorError: AssertionError: 1 v.s. 4",
                "error_at": "torch/_inductor/scheduler.py:get_numel_rnumel",
                "hint": hint_for("", "torch/_inductor/scheduler.py:get_numel_rnumel")}
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(run)
    lines = [ln for ln in (run / "report.md").read_text().splitlines() if "try:" in ln]
    assert len(lines) == 1
    where = "(raised in torch/_inductor/scheduler.py:get_numel_rnumel)"
    assert f"train_step/{rows[2]['variant']} failed {where}" in lines[0]
    assert "triton.mix_order_reduction=0" in lines[0]


def test_the_report_flags_a_case_that_ended_slowed_down(tmp_path):
    from bench.gpu_state import parse
    from reports.build import build_report

    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rows[2]["gpu_state"] = parse("1410, 1980, 88, 699.5, 0x0000000000000040")
    rows[1]["gpu_state"] = parse("1980, 1980, 55, 480, 0x0000000000000004")
    rows[0]["gpu_state"] = parse("[N/A], [N/A], 90, [N/A], 0x0000000000000020")  # no clock reading
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(run)
    md = (run / "report.md").read_text()
    flag = [line for line in md.splitlines() if "the GPU slowed itself down" in line]
    case = f"{rows[2]['workload']}/{rows[2]['variant']}"
    assert len(flag) == 1 and f"{case} (HW thermal slowdown, 1410 MHz)" in flag[0]
    assert f"{rows[0]['workload']}/{rows[0]['variant']} (SW thermal slowdown)" in flag[0]
    assert "1410/1980 MHz, 88 °C, 700 W; HW thermal slowdown" in md and "1980/1980 MHz, 55 °C, 480 W |" in md


def test_the_report_shows_the_gpu_while_timed_and_flags_a_slowdown_seen_in_the_interleaved_blocks(tmp_path):
    from bench.gpu_state import parse, summarize
    from reports.build import build_report

    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    hot = [parse(line) for line in ("1980, 1980, 60, 500, 0x4", "1410, 1980, 88, 699.5, 0x40",
                                    "1755, 1980, 80, 690, 0x0")]
    rows[1]["gpu_during"] = summarize(hot[:1] + hot[2:])  # the timed steps ran clean
    rows[1]["paired"] = {**rows[1].get("paired", {}), "gpu_during": summarize(hot)}  # the blocks did not
    rows[1]["gpu_state"] = parse("1700, 1980, 70, 300, 0x0")  # superseded by gpu_during in the table
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "GPU while timed" in md and "GPU at end" not in md
    assert "1867.5/1980 MHz (min 1755), ≤80 °C, 595 W, 2 samples |" in md
    flag = [line for line in md.splitlines() if "the GPU slowed itself down" in line]
    case = f"{rows[1]['workload']}/{rows[1]['variant']}"
    assert len(flag) == 1 and f"{case} (HW thermal slowdown, 1755 MHz)" in flag[0]


def test_a_suite_s_own_baseline_gets_its_column_and_text_stays_in_its_table_cell_or_list_item():
    from pathlib import Path

    from reports.goals import check, verdict_line
    from reports.render import Block, to_markdown

    base = {"workload": "w", "status": "ok", "s_per_iter": {"median": 1.0, "p20": 1.0, "p80": 1.0, "n": 3},
            "step_times_s": [1.0] * 3}
    rows = [{**base, "variant": "bf16", "order": 0},
            {**base, "variant": "bf16+compile", "order": 1,
             "paired": {"baseline": "bf16",
                        "speedup": {"ratio": 1.5, "ci_low": 1.4, "ci_high": 1.6, "pairs": 6}}},
            {"workload": "w", "variant": "bad", "order": 2, "status": "error",
             "error": "case process died: Fatal Python error: Aborted\r\n\nFile \"<module>\" a|b"}]
    table = workload_table(rows)
    assert table["vs bf16"].tolist()[1] == "1.50× [1.40–1.60]"
    md = to_markdown([Block("table", table)], Path("."))
    assert len(md.strip().splitlines()) == 2 + len(rows)  # header, rule, one line per row
    assert "&lt;module>" in md and "a\\|b" in md
    # inside a cell's code span `<` stays itself (an entity there shows literally)
    import pandas as pd

    errors = pd.DataFrame({"error": ["expected <float> in `vector<int>`"]})
    cell = to_markdown([Block("table", errors)], Path("."))
    assert "expected &lt;float> in `vector<int>`" in cell
    # a lone backtick (a message cut short) opens no code span: every `<` stays escaped
    cut = pd.DataFrame({"error": ["can't pickle `local at <lambda>"]})
    lone = to_markdown([Block("table", cut)], Path("."))
    assert "can't pickle `local at &lt;lambda>" in lone
    # a complete code span before the lone backtick stays a code span
    from reports.render import _md_text

    assert _md_text("expected `vector<int>` got `<lambda") == "expected `vector<int>` got `&lt;lambda"
    line = verdict_line({"case": "w/bad"}, check({"case": "w/bad", "max_s_per_iter": 1}, rows, {}))
    assert "\n" not in line and "\r" not in line
    assert to_markdown([Block("list", ["one\nline", "two"])], Path(".")) == "- one line\n- two\n"


def test_a_run_without_env_json_or_suite_fields_says_so_and_markdown_text_keeps_angle_brackets(tmp_path):
    from reports.build import build_report

    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    for row in rows:
        del row["suite"]
    rows[4]["error_at"] = "torch/_dynamo/eval_frame.py:<lambda>"
    rows[4]["status"], rows[4]["error"], rows[4]["hint"] = "error", "RuntimeError: boom", "try eager"
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "env.json").unlink()
    build_report(run)
    md = (run / "report.md").read_text()
    assert "- no env.json in this run folder" in md and "device: ?" not in md
    assert "(raised in torch/_dynamo/eval_frame.py:&lt;lambda>)" in md
    assert "<lambda>" not in md.replace("`", "")


def test_a_rebuilt_report_drops_charts_of_rows_no_longer_there_and_names_its_folder(tmp_path, monkeypatch):
    from reports.build import build_report

    run = write_run(tmp_path / "run")
    build_report(run)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    charts = {p.name for p in (run / "figures").glob("*.png")}
    gone = rows[0]["workload"]
    assert any(name.startswith(gone) for name in charts)
    (run / "figures" / "compare.png").write_bytes(b"a comparison's chart")  # not the report's to drop
    writing = run / "figures" / ".x_memory.99999.deadbeef.tmp.png"  # another build's chart in flight
    writing.write_bytes(b"")
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["workload"] != gone))
    monkeypatch.chdir(run)
    build_report(".")
    left = {p.name for p in (run / "figures").glob("[!.]*.png")}
    assert not any(name.startswith(gone) for name in left) and "compare.png" in left
    assert left <= charts | {"compare.png"} and list((run / "figures").glob(".*")) == [writing]
    assert "<title>segbench report run</title>" in (run / "report.html").read_text()


def test_markdown_text_escapes_tags_outside_code_spans_only():
    from reports.render import Block, to_markdown

    md = to_markdown([Block("h2", "Workload <w>"), Block("p", "a `x<y` and <b>"), Block("list", ["<i>"])],
                     tmp := __import__("pathlib").Path("."))
    assert md.splitlines()[0] == "## Workload &lt;w>" and "a `x<y` and &lt;b>" in md and "- &lt;i>" in md
    assert tmp


def test_a_report_says_how_its_rows_were_measured_by_the_segbench_that_measured_them(tmp_path):
    from reports.build import build_report
    from reports.method import METHOD

    run = write_run(tmp_path / "run")
    env = json.loads((run / "env.json").read_text())
    env["method"] = ["Measured the old way, once."]  # as a run's env.json records it
    (run / "env.json").write_text(json.dumps(env))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "- Measured the old way, once." in md and METHOD[1][:40] not in md
    del env["method"]  # a run from before the text was recorded: today's, said to be so
    (run / "env.json").write_text(json.dumps(env))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "predates recorded method text" in md and METHOD[1][:40] in md
    env["method"] = ["Measured the old way, once.", "Parity: old."]  # resumed by a later segbench
    env["resumed"] = [{"time_utc": "2026-12-01T10:00:00", "method": ["Measured the old way, once.",
                                                                     "Parity: new."]}]
    (run / "env.json").write_text(json.dumps(env))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "The rows of the resume at 2026-12-01T10:00:00 were measured by a segbench whose text" in md
    assert "- Parity: new." in md and "- Parity: old." in md


def test_profiles_show_the_timed_step_and_launch_gaps_and_cases_their_time_by_phase(tmp_path):
    """The H100 run's reading: a traced compiled step (128 ms, 62 % idle) beside its timed median
    (70 ms), and ~1300 kernels with ~800 idle gaps per step: launch-bound, which CUDA graphs address."""
    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    compiled = next(r for r in rows if r["variant"] == "bf16+compile")
    compiled["profile"] = {"dir": "profiles/train_step__bf16+compile", "steps": 2}
    compiled["case_wall_s"] = 190.0
    compiled["phase_s"] = {"setup": 4.0, "first_step": 118.0, "parity": 0.5, "timing": 1.5, "paired": 20.0,
                           "profile": 9.0, "attention_kernels": 5.0}
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"device": "cuda", "steps": 2, "total_us": 256_000.0, "kernels": 2722, "idle_gaps": 1587,
               "categories": {"attention": 39_000.0, "convolution": 28_000.0, "idle": 159_000.0,
                              "other": 30_000.0},
               "top": []}
    (run / "profiles" / "train_step__bf16+compile").mkdir(parents=True)
    (run / "profiles" / "train_step__bf16+compile" / "summary.json").write_text(json.dumps(summary))
    proc = run_segbench("report", str(run))
    assert proc.returncode == 0, proc.stderr
    md = (run / "report.md").read_text()
    traced = next(line for line in md.splitlines() if line.startswith("| train_step__bf16+compile |"))
    # time per step, timed step, kernels / step, idle gaps / step, then the categories
    timed_ms = compiled["s_per_iter"]["median"] * 1e3
    assert f"| 128.00 ms | {timed_ms:.2f} ms | 1361 | 794 |" in traced and "| 62% |" in traced
    phases = next(line for line in md.splitlines() if line.startswith("| train_step/bf16+compile |"))
    # wall, before (wall less the phases: 32 s of process start and imports), then each phase
    assert phases == ("| train_step/bf16+compile | 190.0 s | 32.0 | 4.0 | 118.0 | 0.5 | 1.5 | 20.0 | 9.0 "
                      "| 5.0 |")
    assert md.count("## Case time by phase (s)") == 1
    assert "kernels / step" in md and "idle gaps / step" in md


def test_a_phase_the_report_does_not_know_gets_its_own_column():
    """A newer segbench's phase (here "reference") is shown, so the phases and `before` add up."""
    from reports.build import _phase_table

    table = _phase_table([{"workload": "w", "variant": "v", "case_wall_s": 10.0,
                           "phase_s": {"setup": 1.0, "reference": 3.0}}])
    (row,) = table.to_dict("records")
    assert (row["wall"], row["before"], row["setup"], row["reference"]) == ("10.0 s", "6.0", "1.0", "3.0")
    assert row["first step"] == ""
