"""bench.gpu_state: the GPU's clocks, temperature and slowdown reasons read with nvidia-smi (a fake one
here); the report's flag is in tests/reports/test_reports.py."""

from __future__ import annotations

import stat

from bench.gpu_state import parse, sample


def test_a_line_of_nvidia_smi_becomes_the_state_with_its_slowdowns_named():
    state = parse("1755, 1980, 61, 452.31, 0x0000000000000064")  # power cap (0x4), SW + HW thermal
    assert state == {"sm_clock_mhz": 1755.0, "max_sm_clock_mhz": 1980.0, "temperature_c": 61.0,
                     "power_w": 452.31, "event_reasons": "0x0000000000000064",
                     "slowdowns": ["SW thermal slowdown", "HW thermal slowdown"]}
    assert parse("1, 2, 3, 4, 0x88")["slowdowns"] == ["HW slowdown", "HW power brake"]  # nvml.h's bits
    # a power cap is normal, a display clock setting (0x100) harmless: neither is a slowdown
    assert parse("1980, 1980, 40, [N/A], 0x0000000000000104")["slowdowns"] == []
    assert parse("1980, 1980, 40, [N/A], 0x0")["power_w"] is None
    assert parse("garbage") is None


def test_sample_asks_the_visible_gpu_and_falls_back_to_the_old_field_name(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    fake = tmp_path / "nvidia-smi"
    # an older driver: knows clocks_throttle_reasons, not clocks_event_reasons
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$*" in *clocks_event_reasons*) echo 'not a valid field' >&2; exit 2;; esac
echo "1410, 1980, 83, 699.5, 0x0000000000000008"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    state = sample()
    assert state["sm_clock_mhz"] == 1410.0 and state["slowdowns"] == ["HW slowdown"]
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and all(c.endswith("-i 3") for c in calls)
    sample("GPU-8f2a0c1e-0000-1111-2222-333344445555")  # what steady_state passes: torch's UUID
    assert log.read_text().splitlines()[-1].endswith("-i GPU-8f2a0c1e-0000-1111-2222-333344445555")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-GPU-8f2a0c1e-0000-1111-2222-333344445555/1/0")
    sample()
    assert log.read_text().splitlines()[-1].endswith("-i GPU-8f2a0c1e-0000-1111-2222-333344445555")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-4f8b2c3d-aaaa-bbbb-cccc-ddddeeeeffff")
    assert sample() is None  # which GPU that is, nvidia-smi's ids cannot say: none rather than another
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert sample() is None
