"""Fold pytest-benchmark's `--benchmark-json` output into a report as one table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def _seconds(value: float) -> str:
    return f"{value * 1e3:.3f} ms" if value >= 1e-3 else f"{value * 1e6:.1f} µs"


def pytest_benchmark_table(path: str | Path) -> pd.DataFrame:
    """name, group, median [q1–q3], rounds, ops/s of each benchmark in a pytest-benchmark JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        benchmarks = data["benchmarks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a pytest-benchmark JSON file ({type(err).__name__}: {err})") from None
    records = []
    for number, b in enumerate(benchmarks, 1):
        try:
            s = b["stats"]
            records.append(
                {
                    "benchmark": b.get("name", "?"),
                    "group": b.get("group") or "",
                    "median [q1–q3]": f"{_seconds(s['median'])} [{_seconds(s['q1'])}–{_seconds(s['q3'])}]",
                    "min": _seconds(s["min"]),
                    "rounds": s.get("rounds", ""),
                    "ops/s": f"{s['ops']:.1f}" if "ops" in s else "",
                }
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: benchmark {number} has no usable stats ({type(err).__name__}: {err})"
                             ) from None
    machine = data.get("machine_info") or {}
    frame = pd.DataFrame.from_records(records)
    frame.attrs["machine"] = (machine.get("cpu") or {}).get("brand_raw") or machine.get("node", "")
    return frame
