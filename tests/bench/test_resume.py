"""`segbench bench --resume`: finish a run cut short, keeping what it measured."""

import json
from pathlib import Path

import pytest

from bench.runner import BenchError, run_suite

SUITE = """
name = "resume-test"
device = "cpu"
reference = "fp32"
[measure]
warmup = 1
iters = 3
[[workload]]
kind = "norm_kernel"
name = "norm"
shape = [1, 4, 8, 8, 8]
variants = ["fp32", "bf16", "channels_last"]
"""


def _rows(run: Path) -> dict[str, dict]:
    return {r["variant"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}


def test_resume_runs_only_what_a_cut_run_lacks(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    run = tmp_path / "run"
    run_suite(suite, run, only=["norm/fp32"], report=False)
    # as a time budget leaves the next case: a "not run" row (channels_last has no row at all)
    first = _rows(run)["fp32"]
    with open(run / "results.jsonl", "a") as f:
        f.write(json.dumps({**first, "variant": "bf16", "status": "error",
                            "error": "not run: the suite's time budget of 60 s was spent"}) + "\n")

    run_suite(suite, run, resume=True, argv=["segbench", "bench", "--resume"])
    rows = _rows(run)
    assert set(rows) == {"fp32", "bf16", "channels_last"}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["fp32"] == first  # kept as measured, not rerun
    env = json.loads((run / "env.json").read_text())
    assert len(env["resumed"]) == 1 and env["resumed"][0]["cases"] == 2
    assert "calibration" in env and "calibration" in env["resumed"][0]
    report = (run / "report.md").read_text()
    assert "resumed at" in report and "3 cases: 3 ok" in report


def test_resume_reruns_a_row_cut_mid_write_and_refuses_damage_before_it(tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    run = tmp_path / "run"
    run_suite(suite, run, only=["norm/fp32"], report=False)
    good = (run / "results.jsonl").read_text()
    torn = json.dumps({**_rows(run)["fp32"], "variant": "bf16"})[:50]  # a copy taken mid-append
    (run / "results.jsonl").write_text(good + torn)
    run_suite(suite, run, only=["norm/fp32", "norm/bf16"], resume=True, report=False)
    assert "last line of" in capsys.readouterr().err
    rows = _rows(run)  # the rewritten file reads whole again
    assert set(rows) == {"fp32", "bf16"} and rows["bf16"]["status"] == "ok"
    (run / "results.jsonl").write_text(torn + "\n" + good)  # damage before good rows: not guessed at
    with pytest.raises(BenchError, match="not a readable run folder .* another --out leaves it"):
        run_suite(suite, run, resume=True, report=False)


def test_the_report_of_a_run_stopped_short_names_the_cases_it_lacks(tmp_path):
    from reports.build import build_report

    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    run = tmp_path / "run"
    run_suite(suite, run, only=["norm/fp32", "norm/bf16"], report=False)
    assert json.loads((run / "env.json").read_text())["planned_cases"] == ["norm/fp32", "norm/bf16"]
    lines = (run / "results.jsonl").read_text().splitlines()
    (run / "results.jsonl").write_text(lines[0] + "\n")  # as if stopped (Ctrl-C, a lease's end) after it
    report, _ = build_report(run)
    assert "1 of the run's 2 planned cases have no row (the run stopped before them: norm/bf16)" in \
        report.read_text()
    # bf16 dropped from the suite before the resume: no longer planned (no resume would run it)
    suite.write_text(SUITE.replace('"fp32", "bf16", "channels_last"', '"fp32", "channels_last"'))
    run_suite(suite, run, resume=True, report=False)  # the resume plans the (edited) whole suite
    assert json.loads((run / "env.json").read_text())["planned_cases"] == ["norm/fp32", "norm/channels_last"]
    report, _ = build_report(run)
    assert "planned cases have no row" not in report.read_text()


def test_resume_refuses_another_suite_or_no_run(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    with pytest.raises(BenchError, match="not a readable run folder"):
        run_suite(suite, tmp_path / "nothing", resume=True, report=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "env.json").write_text(json.dumps({"suite": "quick"}))
    (run / "results.jsonl").write_text("")
    with pytest.raises(BenchError, match="a run of suite 'quick', not 'resume-test'"):
        run_suite(suite, run, resume=True, report=False)


def test_resume_keeps_the_device_and_data_the_run_measured(tmp_path):
    from bench.resume import resumed_inputs as _resumed_inputs

    env = {"requested_device": "cuda", "data_dir": str(tmp_path / "mine")}
    assert _resumed_inputs(tmp_path, env, None, None) == ("cuda", str(tmp_path / "mine"))
    with pytest.raises(BenchError, match="ran on cuda; resume it there, not on cpu"):
        _resumed_inputs(tmp_path, env, "cpu", None)
    with pytest.raises(BenchError, match="measured the data in"):
        _resumed_inputs(tmp_path, env, None, tmp_path / "other")
    # synthesized data (no --data): the run's own RUN/data/prepared is the same data
    own = {"requested_device": "cpu", "data_dir": None}
    assert _resumed_inputs(tmp_path, own, "cpu", tmp_path / "data" / "prepared")[0] == "cpu"


def test_a_run_folder_reused_with_other_data_makes_it_again(tmp_path):
    from bench.config import DataSpec
    from bench.runner import prepare_data

    small = prepare_data(DataSpec(cases=2, shape=[24, 24, 16], size=8), tmp_path)
    assert json.loads((small / "manifest.json").read_text())["config"]["size"] == 8
    again = prepare_data(DataSpec(cases=2, shape=[24, 24, 16], size=8), tmp_path)  # same: kept
    assert again == small
    bigger = prepare_data(DataSpec(cases=3, shape=[24, 24, 16], size=12), tmp_path)
    manifest = json.loads((bigger / "manifest.json").read_text())
    assert manifest["config"]["size"] == 12 and len(manifest["cases"]) == 3


def test_a_new_run_into_an_old_run_folder_replaces_all_of_it(tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    run = tmp_path / "run"
    run_suite(suite, run, only=["norm/fp32", "norm/bf16"], report=False)
    (run / "profiles" / "old__case").mkdir(parents=True)  # as a traced case of the old run leaves
    run_suite(suite, run, only=["norm/channels_last"], report=False)
    assert set(_rows(run)) == {"channels_last"}
    assert not (run / "profiles" / "old__case").exists()
    assert "holds a run of 2 rows: replacing it" in capsys.readouterr().err
    cases = sorted(p.name for p in (run / "cases").iterdir())  # the old run's logs gone, the new one's kept
    assert not [name for name in cases if "norm-fp32" in name or "norm-bf16" in name]
    assert "calibrate.log" in cases and any("norm-channels_last" in name for name in cases)


def test_a_run_never_replaces_a_source_tree_or_another_tools_rows(tmp_path, capsys):
    from segbench.cli import main

    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    tree = tmp_path / "project"
    (tree / "profiles").mkdir(parents=True)
    (tree / "profiles" / "__init__.py").write_text("")
    (tree / "pyproject.toml").write_text("[project]\n")
    with pytest.raises(BenchError, match="source tree .*pyproject.toml"):
        run_suite(suite, tree, only=["norm/fp32"], report=False)
    assert sorted(p.name for p in tree.iterdir()) == ["profiles", "pyproject.toml"]
    assert main(["profile", "--suite", str(suite), "--workload", "norm", "--variant", "fp32",
                 "--out", str(tree)]) == 2
    assert "is a source tree" in capsys.readouterr().err
    assert main(["footprint", "--model", "unet", "--out", str(tree)]) == 2
    assert "is a source tree" in capsys.readouterr().err and not (tree / "suite.toml").exists()
    assert [p.name for p in (tree / "profiles").iterdir()] == ["__init__.py"]
    # a results.jsonl without a run's env.json (another tool's) is neither replaced nor written beside
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(BenchError, match="no env.json of a segbench run"):
        run_suite(suite, other, only=["norm/fp32"], report=False)
    assert [p.name for p in other.iterdir()] == ["results.jsonl"]
    (other / "suite.toml").write_text("# the user's own\n")  # footprint writes its suite.toml: not here
    assert main(["footprint", "--model", "unet", "--out", str(other)]) == 2
    assert (other / "suite.toml").read_text() == "# the user's own\n"


def test_a_long_case_name_makes_a_file_name_the_file_system_takes(tmp_path):
    from bench.profile import profile_dir
    from bench.run_folder import MAX_STEM, file_stem

    options = "+".join(f"inductor:triton.option_number_{i}=1" for i in range(10))
    names = [f"001-train_step-bf16+compile:max-autotune+{options}", f"001-train_step-fp16+compile+{options}"]
    stems = [file_stem(name) for name in names]
    assert all(len(stem) <= MAX_STEM and "/" not in stem and ":" not in stem for stem in stems)
    assert stems[0] != stems[1]  # cut alike, told apart by the hash
    for stem in stems:
        (tmp_path / f"{stem}-reference.spec.json").write_text("{}")  # within the file system's limit
    assert file_stem("000-norm-bf16+compile:max-autotune") == "000-norm-bf16+compile_max-autotune"
    assert len(profile_dir(tmp_path, "train_step", names[0]).name) <= MAX_STEM


def test_resume_refuses_another_machine_and_the_budget_names_its_cuts(tmp_path):
    from reports.rows import cut_by_budget

    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    run = tmp_path / "run"
    run_suite(suite, run, only=["norm/fp32"], report=False)
    env = json.loads((run / "env.json").read_text())
    env["calibration"]["gpu"] = "NVIDIA H100 80GB HBM3"  # as if measured on a lent H100
    (run / "env.json").write_text(json.dumps(env))
    with pytest.raises(BenchError, match="was measured on NVIDIA H100 80GB HBM3, torch .*: start a new run"):
        run_suite(suite, run, resume=True, report=False)
    assert set(_rows(run)) == {"fp32"}  # nothing was run or written
    del env["calibration"]["gpu"]
    threads = env["calibration"]["torch_threads"]
    env["calibration"]["torch_threads"] = threads + 1  # as if run with another OMP_NUM_THREADS
    (run / "env.json").write_text(json.dumps(env))
    expected = f"{threads + 1} torch threads, torch .*, this is .*, {threads} torch threads"
    with pytest.raises(BenchError, match=expected):
        run_suite(suite, run, resume=True, report=False)
    env["calibration"]["torch_threads"], env["compile_cache"] = threads, "warm: the user's caches"
    (run / "env.json").write_text(json.dumps(env))
    with pytest.raises(BenchError, match="compile caches warm: the user's caches; this session's are cold"):
        run_suite(suite, run, resume=True, report=False)
    assert set(_rows(run)) == {"fp32"}
    assert cut_by_budget({"error": "not run: the suite's time budget of 60 s was spent"})
    assert cut_by_budget({"error": "timeout: the suite's time budget of 60 s ran out 12 s into the case"})
    assert not cut_by_budget({"error": "timeout: the case ran past its 900 s limit"})
    assert not cut_by_budget({"status": "ok"})


def test_resume_keeps_a_case_s_own_timeout_and_refuses_a_workload_changed_since(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.replace(', "channels_last"]', "]"))
    run = tmp_path / "run"
    run_suite(suite, run, only=["norm/fp32"], report=False)
    first = _rows(run)["fp32"]
    with open(run / "results.jsonl", "a") as f:  # it hung past its own limit: a resume would hang again
        f.write(json.dumps({**first, "variant": "bf16", "status": "error",
                            "error": "timeout: the case ran past its 600 s limit"}) + "\n")
    # a variant added to the suite since: the resume runs it, beside the kept rows
    suite.write_text(SUITE)
    run_suite(suite, run, resume=True, report=False)
    rows = _rows(run)
    assert rows["bf16"]["error"].startswith("timeout: the case ran past")
    assert rows["channels_last"]["status"] == "ok"
    # the workload's measurement changed: its kept rows and a new one would not agree
    suite.write_text(SUITE.replace("iters = 3", "iters = 5"))
    with pytest.raises(BenchError, match="workload\\(s\\) norm of .* changed in the suite since they ran"):
        run_suite(suite, run, resume=True, report=False)


def test_a_resume_records_workloads_and_goals_the_suite_gained_so_the_next_resume_checks_them(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    run = tmp_path / "run"
    run_suite(suite, run, only=["norm/fp32"], report=False)
    second = SUITE + SUITE[SUITE.index("[[workload]]"):].replace('name = "norm"', 'name = "norm2"')
    goal = '\n[[goal]]\ncase = "norm2/bf16"\nmax_s_per_iter = 1.0\n'
    suite.write_text(second + goal)
    run_suite(suite, run, resume=True, only=["norm2/fp32"], report=False)
    env = json.loads((run / "env.json").read_text())
    assert set(env["workload_fingerprints"]) == {"norm", "norm2"}
    assert [g["case"] for g in env["goals"]] == ["norm2/bf16"]  # the report judges by the suite as it is
    head, tail = second.rsplit("[1, 4, 8, 8, 8]", 1)  # norm2's shape
    suite.write_text(head + "[1, 4, 8, 8, 4]" + tail + goal)
    with pytest.raises(BenchError, match="workload\\(s\\) norm2 of .* changed"):
        run_suite(suite, run, resume=True, only=["norm2/bf16"], report=False)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_suite_on_a_machine_without_one_names_where_cuda_came_from(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.replace('device = "cpu"', 'device = "cuda"'))
    with pytest.raises(BenchError, match="cannot measure the cuda device \\(suite resume-test's device\\): "
                                         "PyTorch sees no CUDA device"):
        run_suite(suite, tmp_path / "run", report=False)
    with pytest.raises(BenchError, match="\\(--device\\)"):
        run_suite(tmp_path / "suite.toml", tmp_path / "run2", device="cuda", report=False)
    assert not (tmp_path / "run" / "figures").exists() and not (tmp_path / "run" / "results.jsonl").exists()
    suite.write_text(SUITE)
    run_suite(suite, tmp_path / "old", only=["norm/fp32"], report=False)
    with pytest.raises(BenchError, match="cannot measure the cuda device"):
        run_suite(suite, tmp_path / "old", device="cuda", report=False)
    assert set(_rows(tmp_path / "old")) == {"fp32"}  # the run in the folder stays as it was
    assert (tmp_path / "old" / "env.json").is_file()


def test_a_case_the_budget_stopped_says_so_and_results_lines_are_strict_json(tmp_path, monkeypatch):
    import math

    from bench import runner
    from reports.rows import cut_by_budget

    real = runner.run_case_process

    def case_process(spec, folder, stem, timeout_s):
        if spec.get("kind") == "calibrate":
            return real(spec, folder, stem, timeout_s)
        # as the runner's wait reports a case it stopped (whatever stopped it)
        return {"status": "error", "error": f"timeout: the case ran past its {timeout_s:.0f} s limit",
                "first_step_s": math.nan}

    monkeypatch.setattr(runner, "run_case_process", case_process)
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.replace('device = "cpu"', 'device = "cpu"\nbudget_s = 300\ntimeout_s = 900'))
    run = tmp_path / "run"
    run_suite(suite, run, only=["norm/fp32"], report=False)
    text = (run / "results.jsonl").read_text()
    row = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in results.jsonl"))
    assert cut_by_budget(row) and "the suite's time budget of 300 s ran out" in row["error"]
    assert "(its own limit: 900 s)" in row["error"] and row["first_step_s"] is None


def test_a_resume_forgets_the_cached_reference_of_a_changed_workload_without_kept_rows(tmp_path):
    from bench.commands import _suite_with
    from bench.resume import workload_fingerprints
    from bench.suite_file import load_suite

    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.replace(', "bf16", "channels_last"]', "]"))
    run = tmp_path / "run"
    run_suite(suite, run, report=False)
    row = _rows(run)["fp32"]
    cut = {**row, "status": "error", "error": "not run: the suite's time budget of 60 s was spent"}
    (run / "results.jsonl").write_text(json.dumps(cut) + "\n")
    stale = run / "cache" / "reference-norm.json"
    stale.parent.mkdir(exist_ok=True)
    stale.write_text('{"variant": "fp32", "losses": [1.0]}')  # as a training workload caches it
    suite.write_text(SUITE.replace(', "bf16", "channels_last"]', "]").replace("iters = 3", "iters = 4"))
    run_suite(suite, run, resume=True, report=False)
    assert not stale.exists() and _rows(run)["fp32"]["s_per_iter"]["n"] == 4
    # how many steps are traced after the timing changes no number: not a changed workload
    assert workload_fingerprints(load_suite("swin-goal")) == workload_fingerprints(
        _suite_with("swin-goal", 2, None))
    # --budget-s: the smaller of the suite's and the call's (a lease's) budget
    assert _suite_with("swin-goal", None, 300).budget_s == 300
    assert _suite_with("swin-goal", None, 5000).budget_s == load_suite("swin-goal").budget_s


def test_a_workload_s_fingerprint_covers_its_reference_baseline_and_data(tmp_path):
    """What --resume must refuse to mix: rows whose parity used another reference, paired with another
    baseline, or measured on other synthesized data."""
    from bench.resume import workload_fingerprints
    from bench.suite_file import parse_suite

    text = SUITE + '[data]\ncases = 2\nsize = 16\n'

    def fingerprint(t: str) -> str:
        return workload_fingerprints(parse_suite(t, tmp_path / "suite.toml"))["norm"]

    base = fingerprint(text)
    for changed in (text.replace('reference = "fp32"', 'reference = "bf16"'),
                    text.replace("size = 16", "size = 24"),
                    text.replace('reference = "fp32"', 'reference = "fp32"\nbaseline = "bf16"')):
        assert fingerprint(changed) != base, changed


def test_a_new_run_into_an_old_folder_drops_its_cached_references(tmp_path):
    from bench.run_folder import clear_old_run

    (tmp_path / "results.jsonl").write_text('{"workload": "infer"}\n')
    (tmp_path / "cache").mkdir()
    stale = tmp_path / "cache" / "reference-infer.json"
    stale.write_text('{"variant": "fp32", "tta": false}')
    clear_old_run(tmp_path)
    assert not stale.exists()  # the new run would take the old run's reference for its parity
