"""What the report's charts draw: error bars from p20 to p80, speedup intervals, the line at 1x."""

from __future__ import annotations

import math

import pytest
from report_runs import write_run


@pytest.fixture(autouse=True)
def _close_figures():
    """The captured figures skip figures._save, the one place that closes them."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _capture(monkeypatch):
    from reports import figures

    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault("fig", fig))
    return figures, drawn


def _error_segments(ax):
    (bars,) = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    segments = bars.errorbar.lines[2][0].get_segments()
    return [(float(s[0][0]), float(s[1][0])) for s in segments if len(s)]


def test_step_time_bars_span_p20_to_p80(monkeypatch, tmp_path):
    figures, drawn = _capture(monkeypatch)
    rows = [
        {
            "status": "ok",
            "variant": "v",
            "kind": "train_step",
            "s_per_iter": {"median": 0.010, "p20": 0.008, "p80": 0.015},
        }
    ]
    figures.step_times("w", rows, tmp_path)
    ((lo, hi),) = _error_segments(drawn["fig"].axes[0])
    assert (lo, hi) == pytest.approx((8.0, 15.0))


def test_speedup_bars_span_the_interval_and_mark_parity_at_one(monkeypatch, tmp_path):
    from reports.tables import baselines, load_results, quotable, speedup

    figures, drawn = _capture(monkeypatch)
    rows = [r for r in load_results(write_run(tmp_path / "run")) if r["workload"] == "train_step"]
    figures.speedups("train_step", rows, tmp_path)
    ax = drawn["fig"].axes[0]
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.lines)
    by = {r["variant"]: r for r in rows}
    name = baselines(rows)[0]
    stats = [
        speedup(r, by.get(name), name) for r in rows if r.get("s_per_iter") and quotable(r, by.get(name))
    ]
    expected = [(s["ci_low"], s["ci_high"]) for s in stats if s and s.get("ci_low") is not None]
    got = [seg for seg in _error_segments(ax) if not any(map(math.isnan, seg))]
    assert expected and [v for seg in got for v in seg] == pytest.approx([v for seg in expected for v in seg])
