"""A diverged trajectory or a NaN error: parity says so, results.jsonl stays strict JSON, the report
and the goals read it as non-finite (not as "not measured", nor as a small deviation)."""

import json
import math

from bench.measure import max_rel_dev
from bench.runner import json_line
from reports.goals import check
from reports.tables import workload_table


def test_a_diverged_trajectory_is_an_infinite_deviation_wherever_its_nan_stands():
    assert max_rel_dev([1.0, math.nan], [1.0, 1.0]) == math.inf  # max() alone gave 0.0 here
    assert max_rel_dev([math.nan, 1.0], [1.0, 1.0]) == math.inf
    assert max_rel_dev([1.0, 2.0], [1.0, math.inf]) == math.inf  # a diverged reference too
    assert abs(max_rel_dev([1.0, 2.2], [1.0, 2.0]) - 0.1) < 1e-12


def test_results_lines_are_strict_json_and_the_report_and_goals_read_null_as_non_finite():
    row = {"suite": "s", "workload": "w", "variant": "bf16", "kind": "train_step", "status": "ok",
           "s_per_iter": {"median": 0.1, "p20": 0.1, "p80": 0.1, "n": 3}, "step_times_s": [0.1, math.nan],
           "parity": {"reference": "fp32", "max_rel_dev": math.inf, "steps": 3},
           "warning": "non-finite loss in the first 3 steps: [2.4, nan, nan]"}
    line = json_line(row)
    back = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # strict
    assert back["parity"]["max_rel_dev"] is None and back["step_times_s"] == [0.1, None]
    assert workload_table([back])["parity"].tolist() == ["non-finite"]
    assert workload_table([row])["parity"].tolist() == ["non-finite"]  # an older run's NaN or inf
    ok = {**back, "parity": {"reference": "fp32", "max_rel_dev": 2e-4, "steps": 3}}
    assert workload_table([ok])["parity"].tolist() == ["2.0e-04"]
    unmeasured = {**back, "parity": {"reference": "fp32", "error": "reference failed"}}
    assert "parity" not in workload_table([unmeasured]).columns  # nothing to show: the column goes
    goal = {"case": "w/bf16", "max_parity": 0.01}
    parity = [r for r in check(goal, [back], {}) if r["criterion"] == "parity vs reference"]
    assert parity[0]["verdict"] == "NOT met" and parity[0]["measured"] == "non-finite"
    assert parity[0]["how"] == "this row's losses were non-finite"
    parity = [r for r in check(goal, [unmeasured], {}) if r["criterion"] == "parity vs reference"]
    assert parity[0]["verdict"] == "not measured"
