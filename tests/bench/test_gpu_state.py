"""bench.gpu_state: the GPU's clocks, temperature and slowdown reasons read with nvidia-smi (a fake one
here); the report's flag is in tests/reports/test_reports.py."""

from __future__ import annotations

import stat

from bench.gpu_state import parse, sample


def test_a_line_of_nvidia_smi_becomes_the_state_with_its_slowdowns_named():
    state = parse("1755, 1980, 61, 452.31, 0x00000000000000A4")  # power cap (0x4), SW + HW thermal
    assert state == {"sm_clock_mhz": 1755.0, "max_sm_clock_mhz": 1980.0, "temperature_c": 61.0,
                     "power_w": 452.31, "event_reasons": "0x00000000000000A4",
                     "slowdowns": ["SW thermal slowdown", "HW thermal slowdown"]}
    assert parse("1980, 1980, 40, [N/A], 0x0000000000000004")["slowdowns"] == []  # a power cap is normal
    assert parse("1980, 1980, 40, [N/A], 0x0")["power_w"] is None
    assert parse("garbage") is None


def test_sample_asks_the_visible_gpu_and_falls_back_to_the_old_field_name(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    fake = tmp_path / "nvidia-smi"
    # an older driver: knows clocks_throttle_reasons, not clocks_event_reasons
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$*" in *clocks_event_reasons*) echo 'not a valid field' >&2; exit 2;; esac
echo "1410, 1980, 83, 699.5, 0x0000000000000040"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    state = sample()
    assert state["sm_clock_mhz"] == 1410.0 and state["slowdowns"] == ["HW slowdown"]
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and all(c.endswith("-i 3") for c in calls)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert sample() is None
