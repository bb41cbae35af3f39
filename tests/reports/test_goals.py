"""Goals (reports.goals): each criterion's verdict and how it was measured, and the goal's line."""

import json

from report_runs import write_run


def test_goals_are_checked_per_criterion_with_their_sources(tmp_path):
    from reports.build import build_report
    from reports.goals import check, verdict_line

    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    goal = {"case": "train_step/bf16", "what": "hand", "max_s_per_iter": 0.2, "max_peak_gib": 2.0,
            "max_parity": 1e-2, "min_speedup": {
                "train_step/seed": 1.2, "train_step/bf16+compile": 1.85, "train_step/fail:x": 1.4}}
    records = {r["criterion"]: r for r in check(goal, rows, anchors={"train_step/fail:x": 0.2})}
    assert {r["verdict"] for r in records.values()} == {"met", "NOT met"}
    assert records["s/iter (median)"]["verdict"] == "met" and records["peak memory"]["measured"] == "1.00 GiB"
    assert records["parity vs reference"]["how"] == "max relative deviation of the loss over ? steps"
    kernel = [{**rows[-1], "workload": "train_step", "variant": "norm", "parity": {
        "max_rel_dev": 3e-3, "metric": "relative L2 error of y and dx (the larger)"}}]
    parity = check({"case": "train_step/norm", "max_parity": 1e-2}, kernel, {})[0]  # a row names its metric
    assert parity["verdict"] == "met" and parity["how"] == "relative L2 error of y and dx (the larger)"
    seed = records["speedup vs train_step/seed"]  # the paired baseline: the interleaved ratio
    assert seed["measured"] == "1.22×" and "interleaved" in seed["how"] and seed["verdict"] == "met"
    assert seed["how"].endswith("its interval reaches below 1.2× (lower end 1.18×)")  # met by the ratio alone
    compiled = records["speedup vs train_step/bf16+compile"]  # two medians: ~0.074 / ~0.138
    assert compiled["verdict"] == "NOT met" and "two case processes" in compiled["how"]
    anchored = records["speedup vs train_step/fail:x"]  # an error row: its anchor stands in
    assert anchored["verdict"] == "met" and "ANCHORS" in anchored["how"]
    assert verdict_line(goal, list(records.values())).endswith("NOT met — speedup vs train_step/bf16+compile")
    unavailable = check({"case": "train_step/fused_norm", "max_s_per_iter": 1.0}, rows, {})
    assert [r["verdict"] for r in unavailable] == ["not measured"]
    assert "not decided" in verdict_line({"case": "train_step/fused_norm"}, unavailable)
    # a case that ran and failed misses its goal; one the budget cut decides nothing
    failed = check({"case": "train_step/fail:x", "max_s_per_iter": 1.0}, rows, {})
    assert [r["verdict"] for r in failed] == ["NOT met"]
    cut = [dict(r, error="not run: the suite's time budget of 520 s was spent") if r["variant"] == "fail:x"
           else r for r in rows]
    assert [r["verdict"] for r in check({"case": "train_step/fail:x", "max_s_per_iter": 1.0}, cut, {})] == [
        "not measured"]
    budget_cut = "timeout: the suite's time budget of 520 s ran out 35 s into the case"
    own_limit = "timeout: the case ran past its 900 s limit"  # it ran and failed
    for error, verdict in ((budget_cut, "not measured"), (own_limit, "NOT met")):
        timed_out = [dict(r, error=error) if r["variant"] == "fail:x" else r for r in rows]
        goal_x = {"case": "train_step/fail:x", "max_s_per_iter": 1.0}
        assert [r["verdict"] for r in check(goal_x, timed_out, {})] == [verdict], error

    env = json.loads((run / "env.json").read_text())
    env.update(goals=[goal], anchors={"train_step/fail:x": 0.2})
    (run / "env.json").write_text(json.dumps(env))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "## Goals" in md and "goal train_step/bf16 (hand): NOT met" in md


def test_goal_lines_carry_an_interval_caveat_the_anchor_s_reason_and_digits_at_the_threshold():
    from reports.goals import check, verdict_line
    from reports.rows import cudnn_text as _cudnn
    from reports.tables import workload_table

    base = {"workload": "w", "status": "ok", "peak_bytes": 2**30}
    fast = {**base, "variant": "fast", "s_per_iter": {"median": 0.04003, "p20": 0.04, "p80": 0.0401, "n": 18},
            "paired": {"baseline": "seed",
                       "speedup": {"ratio": 4.28, "ci_low": 4.0, "ci_high": 4.57, "pairs": 6}},
            "parity": {"reference": "fp32", "error": "OutOfMemoryError: the fp32 reference"}}
    failed = {**base, "variant": "compile", "status": "error",
              "error": "InductorError: RuntimeError: 1 v.s. 4"}
    goal = {"case": "w/fast", "min_speedup": {"w/seed": 4.2, "w/compile": 1.85}, "max_parity": 0.01}
    records = check(goal, [fast, failed], {"w/compile": 0.074})
    by = {r["criterion"]: r for r in records}
    assert by["speedup vs w/seed"]["verdict"] == "met" and by["speedup vs w/seed"]["caveat"]
    anchored = by["speedup vs w/compile"]["how"]
    assert "w/compile error in this run (InductorError: RuntimeError: 1 v.s. 4): its anchor 0.074 s" \
        in anchored
    assert "the fp32 reference" in by["parity vs reference"]["how"]
    del goal["max_parity"]
    line = verdict_line(goal, check(goal, [fast, failed], {"w/compile": 0.080}))
    assert line == ("goal w/fast: met, with caveats (2 of 2 criteria; speedup vs w/seed: its interval "
                    "reaches below 4.2× (lower end 4.00×); speedup vs w/compile: against the ANCHORS number "
                    "for w/compile, not this run's: error in this run (InductorError: RuntimeError: 1 v.s. "
                    "4))")
    tight = check({"case": "w/fast", "max_s_per_iter": 0.04}, [fast], {})[0]
    assert (tight["measured"], tight["verdict"]) == ("0.04003 s", "NOT met")  # not "0.0400 s | NOT met"
    cut = {**failed, "error": "not run: the suite's time budget of 520 s was spent"}
    line = verdict_line({"case": "w/compile"}, check({"case": "w/compile", "max_s_per_iter": 1}, [cut], {}))
    assert line.endswith("not decided — not measured: the case (cut by the time budget)")
    errors = workload_table([fast])["error"].tolist()
    assert errors == ["parity reference: OutOfMemoryError: the fp32 reference"]
    assert (_cudnn(91900), _cudnn(90000), _cudnn(8902)) == ("9.19.0", "9.0.0", "8.9.2")


def test_a_peak_memory_goal_on_a_footprint_estimate_is_decided_with_its_caveat():
    from reports.goals import check, verdict_line

    est = {"workload": "fit", "variant": "bf16", "kind": "footprint", "status": "ok", "estimate": True,
           "estimated_peak_bytes": 5 * 2**30}
    goal = {"case": "fit/bf16", "max_peak_gib": 6.0}
    assert verdict_line(goal, check(goal, [est], {})) == (
        "goal fit/bf16: met, with caveats (1 of 1 criteria; peak memory: an estimate, not a measurement)")
    assert "NOT met" in verdict_line(goal, check({**goal, "max_peak_gib": 4.0}, [est], {}))
    timed = check({**goal, "max_s_per_iter": 1.0}, [est], {})
    assert [r["verdict"] for r in timed] == ["not measured", "met"]


def test_a_goal_against_another_paired_case_chains_through_their_shared_baseline():
    from reports.goals import check, verdict_line

    def row(variant, s, factor):  # interleaved with seed (1.0 s) in a process running `factor` slower
        blocks = [[s * factor * (1 + 0.01 * i)] * 3 for i in range(4)]
        base = [[1.0 * factor * (1 + 0.01 * i)] * 3 for i in range(4)]
        return {"workload": "w", "variant": variant, "status": "ok", "s_per_iter": {"median": s * factor},
                "step_times_s": [s * factor] * 5,
                "paired": {"baseline": "seed", "baseline_blocks_s": base, "variant_blocks_s": blocks,
                           "speedup": {"ratio": 1 / s, "ci_low": 1 / s, "ci_high": 1 / s, "pairs": 4}}}

    fast, compiled = row("fast", 0.25, 1.0), row("compile", 0.5, 1.2)  # the raw medians would say 2.4x
    goal = {"case": "w/fast", "min_speedup": {"w/compile": 1.85}}
    (record,) = check(goal, [fast, compiled], {})
    assert record["measured"] == "2.00×" and "chained through seed" in record["how"] and not record["caveat"]
    assert verdict_line(goal, [record]) == "goal w/fast: met (1 of 1 criteria)"
    # without the blocks (a run before them): the two processes' medians, named as a caveat
    bare = {**compiled, "paired": {}}
    (record,) = check(goal, [fast, bare], {})
    assert record["caveat"].startswith("two processes' medians, no interval") and "two processes'" in \
        verdict_line(goal, [record])


def test_goal_lines_name_a_failure_s_error_a_median_at_the_edge_and_budget_cuts_apart(tmp_path):
    from reports.build import _summary
    from reports.goals import check, verdict_line

    oom = {"workload": "w", "variant": "fast", "status": "error",
           "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB | more of the same"}
    goal = {"case": "w/fast", "max_s_per_iter": 0.04}
    line = verdict_line(goal, check(goal, [oom], {}))
    assert line == ("goal w/fast: NOT met — the case ran (OutOfMemoryError: CUDA out of memory. Tried to "
                    "allocate 2.00 GiB)")
    edge = {"workload": "w", "variant": "fast", "status": "ok",
            "s_per_iter": {"median": 0.0399, "p20": 0.0394, "p80": 0.0403, "n": 15}}
    (record,) = check(goal, [edge], {})
    assert record["verdict"] == "met" and record["how"].startswith("median of 15 steps, p20–p80 39.40–40.30")
    assert verdict_line(goal, [record]) == (
        "goal w/fast: met, with caveats (1 of 1 criteria; s/iter (median): its 80th percentile 0.0403 s is "
        "above 0.04 s)")
    close = {**edge, "s_per_iter": {"median": 0.0398, "p20": 0.0397, "p80": 0.0399, "n": 15}}
    assert check(goal, [close], {})[0]["caveat"] == "within 5 % of the limit (one process's median)"
    unavailable = {"workload": "w", "variant": "fast", "status": "unavailable", "error": "needs CUDA"}
    assert verdict_line(goal, check(goal, [unavailable], {})) == (
        "goal w/fast: not decided — not measured: the case (unavailable here: needs CUDA)")
    # a train_step row whose own losses were finite: its non-finite parity is the reference's
    diverged_ref = {**edge, "kind": "train_step", "parity": {"reference": "fp32", "max_rel_dev": None}}
    (parity,) = check({"case": "w/fast", "max_parity": 0.01}, [diverged_ref], {})
    assert parity["verdict"] == "not measured" and "the reference's" in parity["how"]
    cut = {"workload": "w", "variant": "compile", "status": "error",
           "error": "timeout: the suite's time budget of 520 s ran out 35 s into the case"}
    assert _summary([edge, oom, cut])[0] == (
        "3 cases: 1 ok, 1 error, 1 cut by the time budget (`segbench bench --resume RUN` runs them), "
        "0 unavailable")


def test_a_gpu_slowdown_during_a_goal_row_or_its_comparison_is_a_caveat():
    """Thermal or power slowdowns make a timing untrustworthy: the goal cannot be a plain "met"."""
    from reports.goals import check, verdict_line

    base = {"workload": "w", "status": "ok", "peak_bytes": 2**30}
    fast = {**base, "variant": "fast", "s_per_iter": {"median": 0.02, "p20": 0.0199, "p80": 0.0201, "n": 18}}
    slow = {**base, "variant": "stock", "s_per_iter": {"median": 0.08, "p20": 0.079, "p80": 0.081, "n": 18}}
    goal = {"case": "w/fast", "max_s_per_iter": 0.04, "min_speedup": {"w/stock": 1.85}}
    paired = {"baseline": "stock", "speedup": {"ratio": 4.0, "ci_low": 3.9, "ci_high": 4.1, "pairs": 6}}
    clean = check(goal, [{**fast, "paired": paired}, slow], {})
    assert verdict_line(goal, clean) == "goal w/fast: met (2 of 2 criteria)"
    hot = {"sm_clock_mhz": 1400, "slowdowns": ["SW thermal slowdown"]}
    throttled = check(goal, [{**fast, "paired": paired}, {**slow, "gpu_during": hot}], {})
    by = {r["criterion"]: r for r in throttled}
    assert by["s/iter (median)"]["caveat"] == ""  # the goal row itself ran clean
    assert by["speedup vs w/stock"]["caveat"] == "the GPU reported a slowdown (w/stock: SW thermal slowdown)"
    assert "met, with caveats" in verdict_line(goal, throttled)
    own = check(goal, [{**fast, "paired": paired, "gpu_state": hot}, slow], {})
    assert all("w/fast: SW thermal slowdown" in r["caveat"] for r in own)


def test_a_parity_over_its_limit_and_a_diverged_row_miss_their_goals():
    from reports.goals import check, verdict_line

    row = {"workload": "w", "variant": "fast", "status": "ok", "peak_bytes": 2**30,
           "s_per_iter": {"median": 0.02, "p20": 0.0199, "p80": 0.0201, "n": 18},
           "parity": {"reference": "fp32", "max_rel_dev": 0.5}}
    parity_goal = {"case": "w/fast", "max_parity": 0.01}
    line = verdict_line(parity_goal, check(parity_goal, [row], {}))
    assert line == "goal w/fast: NOT met — parity vs reference"
    # losses gone non-finite: a timing goal alone must not be met by the fast garbage
    diverged = {**row, "parity": {}, "warning": "non-finite loss at step 3"}
    timing_goal = {"case": "w/fast", "max_s_per_iter": 0.04}
    line = verdict_line(timing_goal, check(timing_goal, [diverged], {}))
    assert line == "goal w/fast: NOT met — finite losses"


def test_gradient_parity_catches_a_wrong_backward_the_loss_hides_and_the_card_is_named():
    from reports.goals import check, verdict_line

    def row(parity):
        return {"workload": "w", "variant": "fast", "status": "ok", "parity": parity,
                "s_per_iter": {"median": 0.035, "p20": 0.0349, "p80": 0.0351, "n": 15}}

    goal = {"case": "w/fast", "max_parity": 1e-2, "max_grad_dev": 0.5}
    negated = row({"max_rel_dev": 3.6e-3, "grad_rel_dev": 2.0})  # the loss moved less than bf16's tolerance
    records = check(goal, [negated], {})
    assert [r["verdict"] for r in records] == ["met", "NOT met"]
    assert verdict_line(goal, records).endswith("NOT met — gradient parity vs reference")
    dropout = check(goal, [row({"max_rel_dev": 1e-3, "grad_rel_dev": 0.11})], {})  # other masks: met
    assert [r["verdict"] for r in dropout] == ["met", "met"]
    before = check(goal, [row({"max_rel_dev": 1e-3})], {})  # a row from before gradient parity
    assert before[1]["verdict"] == "not measured" and "not recorded" in before[1]["how"]
    nan = check(goal, [row({"max_rel_dev": 1e-3, "grad_rel_dev": None})], {})  # non-finite gradients
    assert nan[1]["verdict"] == "NOT met" and nan[1]["measured"] == "non-finite"
    # an H100 target measured on an H200: met, with the card named; the ratios need no caveat
    timed = {"case": "w/fast", "max_s_per_iter": 0.04, "card": "H100"}
    on_h200 = check(timed, [row({})], {}, gpu="NVIDIA H200")
    assert on_h200[0]["caveat"] == "measured on NVIDIA H200, the target is for H100"
    assert "met, with caveats" in verdict_line(timed, on_h200)
    assert not check(timed, [row({})], {}, gpu="NVIDIA H100 80GB HBM3")[0]["caveat"]


def _timed(variant: str, s: float, **extra) -> dict:
    return {"workload": "w", "variant": variant, "status": "ok", "step_times_s": [s] * 3,
            "s_per_iter": {"median": s, "p20": s, "p80": s, "n": 3}, **extra}


def test_goal_limits_are_inclusive_and_peaks_in_gib():
    from reports.goals import check

    fast = _timed("fast", 0.04, peak_bytes=2 * 2**30, parity={"max_rel_dev": 0.01})
    goal = {"case": "w/fast", "max_s_per_iter": 0.04, "max_peak_gib": 2.0, "max_parity": 0.01,
            "min_speedup": {"w/seed": 2.0}}
    verdicts = {r["criterion"]: r["verdict"] for r in check(goal, [fast, _timed("seed", 0.08)], {})}
    assert set(verdicts.values()) == {"met"}, verdicts  # each exactly at its limit
    # 2.15 GiB (2.31 GB) is over a 2.1 GiB limit, and would pass were it read as GB
    (over,) = check({"case": "w/fast", "max_peak_gib": 2.1}, [{**fast, "peak_bytes": int(2.15 * 2**30)}], {})
    assert over["verdict"] == "NOT met"


def test_speedups_are_not_chained_through_two_different_baselines():
    from reports.goals import check

    def blocks(s: float) -> list[list[float]]:
        return [[s] * 3 for _ in range(4)]

    # fast is 4x its baseline (seed), compile 1x its own (stock): fast / compile through a shared
    # baseline would read 4x; they share none, so the rows' medians (1.0 / 1.0) decide
    fast = _timed("fast", 1.0, paired={"baseline": "seed", "baseline_blocks_s": blocks(4.0),
                                       "variant_blocks_s": blocks(1.0)})
    comp = _timed("compile", 1.0, paired={"baseline": "stock", "baseline_blocks_s": blocks(1.0),
                                          "variant_blocks_s": blocks(1.0)})
    (record,) = check({"case": "w/fast", "min_speedup": {"w/compile": 2.0}}, [fast, comp], {})
    assert "chained" not in record["how"] and record["verdict"] == "NOT met", record


def test_an_unpaired_speedup_is_a_ratio_of_medians():
    from reports.tables import speedup

    base = {"workload": "w", "variant": "seed", "status": "ok", "step_times_s": [1.0, 1.0, 1.0, 10.0]}
    row = {"workload": "w", "variant": "fast", "status": "ok", "step_times_s": [0.5] * 4}
    assert speedup(row, base, "seed")["ratio"] == 2.0  # medians 1.0 / 0.5 (means: 3.25 / 0.5)
