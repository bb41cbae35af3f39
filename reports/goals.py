"""A suite's goals checked against its rows: one line per criterion, met / NOT met / not measured.

Goals come from the suite file's `[[goal]]` tables via env.json (bench.config.Goal). A speedup
against another case uses, in this order: the interleaved A/B ratio when that case is this row's
paired baseline; the two rows' A/B ratios against the same paired baseline, chained (each case
interleaved with it in its own process: the processes' states cancel as far as they slow that
baseline alike; reports.stats.chained_ratio_ci); the ratio of the two rows' medians (separate
processes, no interval); or the suite's anchor for that case (a number measured elsewhere:
ANCHORS.md) — the table says which, and the goal's line names the last two as caveats. A criterion
is met on its point estimate; the line says when the 95 % interval reaches below the target.
Imports no torch.
"""

from __future__ import annotations

import math

from reports.rows import cut_by_budget
from reports.stats import chained_ratio_ci
from reports.tables import GRAD_KEYS, parity_deviation, speedup

GIB = 2**30


def gpu_slowdowns(row: dict) -> list[dict]:
    """The row's GPU states (timed steps, interleaved blocks, after the timing) that name a slowdown."""
    states = (row.get("gpu_during"), (row.get("paired") or {}).get("gpu_during"), row.get("gpu_state"))
    return [state for state in states if state and state.get("slowdowns")]


def _slowed(*cases: tuple[str, dict | None]) -> str:
    """A caveat naming the GPU slowdowns (thermal, power brake ...) reported while these rows ran."""
    named = []
    for case, row in cases:
        seen = sorted({name for state in gpu_slowdowns(row or {}) for name in state["slowdowns"]})
        if seen:
            named.append(f"{case}: {', '.join(seen)}")
    return f"the GPU reported a slowdown ({'; '.join(named)})" if named else ""


def _join(*caveats: str) -> str:
    return "; ".join(c for c in caveats if c)


def _by_case(rows: list[dict]) -> dict[str, dict]:
    return {f"{r['workload']}/{r['variant']}": r for r in rows}


def _median(row: dict | None) -> float | None:
    if not row or row.get("status") != "ok" or "s_per_iter" not in row:
        return None
    return row["s_per_iter"]["median"]


def _chained(row: dict, other: dict | None) -> dict | None:
    """`row` over `other` through the baseline both were interleaved with (same workload), or None."""
    a, b = row.get("paired") or {}, (other or {}).get("paired") or {}
    if (other is None or other.get("workload") != row["workload"] or not a.get("baseline")
            or a.get("baseline") != b.get("baseline")
            or not all(p.get(k) for p in (a, b) for k in ("baseline_blocks_s", "variant_blocks_s"))):
        return None
    return chained_ratio_ci((a["baseline_blocks_s"], a["variant_blocks_s"]),
                            (b["baseline_blocks_s"], b["variant_blocks_s"]))


def _speedup(row: dict, other_case: str, rows: dict[str, dict], anchors: dict
             ) -> tuple[float, str, float | None, str] | None:
    """(ratio, how it was measured, the 95 % interval's lower end when there is one, a caveat for the
    goal's line when the number is weaker than an interval of this run), or None."""
    workload, _, variant = other_case.partition("/")
    # reports.tables.speedup: the interleaved A/B when the row was paired with that baseline (only
    # within its own workload), else the two rows' samples
    name = variant if row["workload"] == workload else other_case
    other = rows.get(other_case)
    measured = speedup(row, other, name)
    if measured is not None and measured["paired"]:
        if measured.get("ci_low") is None:
            return measured["ratio"], "interleaved A/B, one block pair (no interval)", None, "no interval"
        low, high = measured["ci_low"], measured["ci_high"]
        over = (f"over {measured['pairs']} block pairs" if "pairs" in measured
                else "a bootstrap over steps (a run before block pairs)")
        return measured["ratio"], f"interleaved A/B, 95 % CI {low:.3f}–{high:.3f}, {over}", low, ""
    chained = _chained(row, other)
    if chained is not None and chained["ci_low"] is not None:
        via = row["paired"]["baseline"]
        alone = f"; the two rows' medians alone: {measured['ratio']:.3f}×" if measured is not None else ""
        return chained["ratio"], (
            f"chained through {via}: each case interleaved with {via} in its own process, 95 % CI "
            f"{chained['ci_low']:.3f}–{chained['ci_high']:.3f} (Welch, ≥ {chained['pairs']} block pairs each)"
            + alone
        ), chained["ci_low"], ""
    if measured is not None:
        return (measured["ratio"], "medians of two case processes in this run", None,
                "two processes' medians, no interval (the spread between processes is not measured)")
    if other_case in anchors:
        why = ("not in this run" if other is None else "cut by the time budget" if cut_by_budget(other)
               else f"{other.get('status')} in this run ({_short_error(other)})")
        return anchors[other_case] / row["s_per_iter"]["median"], (
            f"{other_case} {why}: its anchor {anchors[other_case]:g} s stands in (ANCHORS.md, another run "
            "and perhaps another card: compare the Environment)"
        ), None, f"against the ANCHORS number for {other_case}, not this run's: {why}"
    return None


def _short_error(row: dict, limit: int = 80) -> str:
    """A row's error, its first part (inductor repeats the message after " | "), cut with an ellipsis."""
    text = " ".join(str(row.get("error") or row.get("status") or "").split(" | ")[0].split())  # one line
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _near(value: float, target: float, digits: int, kind: str = "f") -> str:
    """`value` with `digits` decimals (format `kind`), or more where that would print the target itself
    (4.197 → 4.197, not 4.20 beside a target of 4.2)."""
    while f"{value:.{digits}{kind}}" == f"{target:.{digits}{kind}}" and value != target and digits < 6:
        digits += 1
    return f"{value:.{digits}{kind}}"


def check(goal: dict, rows: list[dict], anchors: dict, gpu: str | None = None) -> list[dict]:
    """One record per criterion of `goal`: criterion, target, measured, verdict, how. `gpu`: the name of
    the card the run measured on (env.json's calibration), for a goal's `card`."""
    by_case = _by_case(rows)
    row = by_case.get(goal["case"])
    out: list[dict] = []

    def add(criterion: str, target: str, measured: str, ok: bool | None, how: str = "",
            caveat: str = "") -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "NOT met")
        out.append({"goal": goal["case"], "criterion": criterion, "target": target,
                    "measured": measured, "verdict": verdict, "how": how + (f"; {caveat}" if caveat else ""),
                    "caveat": caveat})

    estimate = row is not None and row.get("status") == "ok" and row.get("estimate")  # footprint: no step ran
    if _median(row) is None and not estimate:
        why = "no row" if row is None else f"{row.get('status')}: {row.get('error', '')}"[:120]
        # a case that ran and failed (out of memory, its own timeout) misses its goal; one the time
        # budget cut decides nothing (a lease's end leaves no row at all)
        cut = row is not None and cut_by_budget(row)
        failed = row is not None and row.get("status") == "error" and not cut
        # the headline names it: "not decided — not measured: the case (cut by the time budget)"
        if row is None:
            criterion = "the case (no row)"
        elif cut:
            criterion = "the case (cut by the time budget)"
        elif failed:
            criterion = f"the case ran ({_short_error(row)})"
        elif row.get("status") == "unavailable":
            criterion = f"the case (unavailable here: {_short_error(row)})"
        else:
            criterion = "the case's timing (none recorded)"
        add(criterion, "status ok", why, False if failed else None)
        return out
    if row.get("warning"):
        add("finite losses", "all finite", row["warning"][:120], False)
    median = _median(row)
    limit = goal.get("max_s_per_iter")
    if estimate and (limit is not None or goal.get("min_speedup")):
        add("s/iter (median)", "a timed case", "none: an estimate, no step ran", None)
    elif limit is not None:
        spread = row["s_per_iter"]
        how = ""
        if "p20" in spread and "n" in spread:
            low_ms, high_ms = spread["p20"] * 1e3, spread["p80"] * 1e3
            how = f"median of {spread['n']} steps, p20–p80 {low_ms:.2f}–{high_ms:.2f} ms"
        # one process's median: the spread between processes (2-4 %, see reports.compare) is not measured
        caveat = ""
        if median <= limit < spread.get("p80", 0):
            caveat = f"its 80th percentile {_near(spread['p80'], limit, 4)} s is above {limit:g} s"
        elif 0.95 * limit < median <= limit:
            caveat = "within 5 % of the limit (one process's median)"
        # its timing may be low, not the code's; or the card is another than the target's
        caveat = _join(caveat, _slowed((goal["case"], row)), _other_card(goal, gpu))
        add("s/iter (median)", f"≤ {limit:g} s", f"{_near(median, limit, 4)} s", median <= limit, how, caveat)
    for other_case, target in (goal.get("min_speedup") or {}).items() if not estimate else ():
        found = _speedup(row, other_case, by_case, anchors)
        if found is None:
            add(f"speedup vs {other_case}", f"≥ {target:g}×", "not measured, no anchor", None)
        else:
            ratio, how, low, caveat = found
            # met by the ratio, not by its whole interval: said in the goal's line too
            if low is not None and low < target <= ratio:
                caveat = f"its interval reaches below {target:g}× (lower end {_near(low, target, 2)}×)"
            caveat = _join(caveat, _slowed((goal["case"], row), (other_case, by_case.get(other_case))))
            add(f"speedup vs {other_case}", f"≥ {target:g}×", f"{_near(ratio, target, 2)}×", ratio >= target,
                how, caveat)
    if goal.get("max_peak_gib") is not None:
        peak, how, caveat = row.get("peak_bytes"), row.get("peak_kind", ""), ""
        if peak is None and row.get("estimated_peak_bytes") is not None:
            peak, how = row["estimated_peak_bytes"], "profiles.footprint's estimate of CUDA allocated bytes"
            caveat = "an estimate, not a measurement"
        if peak is None:
            add("peak memory", f"≤ {goal['max_peak_gib']:g} GiB", "not recorded", None)
        else:
            add("peak memory", f"≤ {goal['max_peak_gib']:g} GiB",
                f"{_near(peak / GIB, goal['max_peak_gib'], 2)} GiB", peak / GIB <= goal["max_peak_gib"],
                how, caveat)
    if goal.get("max_parity") is not None:
        parity = row.get("parity") or {}
        dev = parity.get("max_rel_dev")  # present but null: results.jsonl's non-finite
        if dev is None or not math.isfinite(dev):
            measured = "non-finite" if "max_rel_dev" in parity else "none"
            ok, why = None, parity.get("error") or ""
            if "max_rel_dev" in parity and row.get("warning"):
                ok, why = False, "this row's losses were non-finite"
            elif "max_rel_dev" in parity and row.get("kind") == "train_step":
                # finite losses here: the reference's were not (a run before parity said so itself)
                why = "non-finite against finite losses of this row: the reference's"
            elif "max_rel_dev" in parity:
                ok, why = False, "non-finite error against the reference"
            add("parity vs reference", f"≤ {goal['max_parity']:g}", measured, ok, str(why)[:160])
        else:
            what = row["parity"].get("metric") or (
                f"max relative deviation of the loss over {row['parity'].get('steps', '?')} steps")
            add("parity vs reference", f"≤ {goal['max_parity']:g}", _near(dev, goal["max_parity"], 1, "e"),
                dev <= goal["max_parity"], what)
    if goal.get("max_grad_dev") is not None:
        _check_grad(goal["max_grad_dev"], row, add)
    return out


def _other_card(goal: dict, gpu: str | None) -> str:
    """A caveat when the goal's s/iter target is for another card than the one that ran the row (its
    ratios stand on any card: both sides ran on this one)."""
    if not goal.get("card") or goal["card"].lower() in str(gpu or "").lower():
        return ""
    return f"measured on {gpu or 'no GPU'}, the target is for {goal['card']}"


def _check_grad(limit: float, row: dict, add) -> None:
    """The first step's gradients against the reference's (a wrong backward the loss hides)."""
    parity = row.get("parity") or {}
    found = parity_deviation(parity, GRAD_KEYS)
    target = f"≤ {limit:g}"
    if found is None:
        why = parity.get("grad_error") or "not recorded (a row before gradient parity, or no reference)"
        add("gradient parity vs reference", target, "none", None, str(why)[:160])
    elif found[1] is None:  # present but not finite: a broken backward
        add("gradient parity vs reference", target, "non-finite", False, "non-finite")
    else:
        add("gradient parity vs reference", target, _near(found[1], limit, 1, "e"), found[1] <= limit,
            "relative L2 of the first step's gradients (a strided sample per parameter)")


def verdict_line(goal: dict, records: list[dict]) -> str:
    """One summary line: met only when every criterion was measured and met."""
    verdicts = [r["verdict"] for r in records]
    failed = [r["criterion"] for r in records if r["verdict"] == "NOT met"]
    missing = [r["criterion"] for r in records if r["verdict"] == "not measured"]
    name = goal["case"] + (f" ({goal['what']})" if goal.get("what") else "")
    if failed:
        return f"goal {name}: NOT met — {', '.join(failed)}"
    if missing:
        return f"goal {name}: not decided — not measured: {', '.join(missing)}"
    caveats = [f"{r['criterion']}: {r['caveat']}" for r in records if r.get("caveat")]
    # plain "met": this run alone decides every criterion, and each interval clears its target
    counted = f"{len(verdicts)} of {len(verdicts)} criteria"
    if caveats:
        return f"goal {name}: met, with caveats ({counted}; {'; '.join(caveats)})"
    return f"goal {name}: met ({counted})"
