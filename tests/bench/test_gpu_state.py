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


def _fake_smi(tmp_path, answers: list[str]):
    """An nvidia-smi that gives the next of `answers` on each call (the last one from then on)."""
    count = tmp_path / "count"
    count.write_text("0")
    lines = "\n".join(f'{i}) echo "{a}";;' for i, a in enumerate(answers))
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"""#!/bin/sh
read n < {count}; echo $((n + 1)) > {count}  # shell builtins only: PATH holds just this
case $n in
{lines}
*) echo "{answers[-1]}";;
esac
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return count


def test_a_watch_samples_while_its_block_runs_and_sums_up_what_the_timed_steps_ran_at(tmp_path, monkeypatch):
    import time

    from bench.gpu_state import Watch

    count = _fake_smi(tmp_path, ["1980, 1980, 50, 400, 0x0", "1755, 1980, 61, 690, 0x4",
                                 "1410, 1980, 88, 700, 0x40", "1800, 1980, 70, 650, 0x0"])
    monkeypatch.setenv("PATH", str(tmp_path))
    with Watch("0", interval_s=0.05) as watch:
        deadline = time.monotonic() + 30
        while int(count.read_text() or 0) < 5 and time.monotonic() < deadline:  # asked 5 times
            time.sleep(0.01)
    summary = watch.summary()
    n = summary.pop("samples")
    assert n >= 4 and n == len(watch.samples)
    assert summary == {"sm_clock_mhz": 1800.0 if n > 4 else 1777.5, "min_sm_clock_mhz": 1410.0,
                       "max_sm_clock_mhz": 1980.0, "temperature_c": 88.0,
                       "power_w": 650.0 if n > 4 else 670.0, "event_reasons": "0x44",
                       "slowdowns": ["HW thermal slowdown"]}
    asked = int(count.read_text())
    time.sleep(0.2)
    assert int(count.read_text()) == asked  # the thread stopped with its block


def test_a_watch_without_nvidia_smi_sums_up_to_none_and_ends_at_once(tmp_path, monkeypatch):
    from bench.gpu_state import Watch, summarize

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with Watch("0", interval_s=60) as watch:
        pass
    assert watch.summary() is None and not watch._thread.is_alive()
    assert summarize([]) is None
    # one [N/A] clock among the samples: the others still give the clocks
    states = [parse("[N/A], [N/A], 40, [N/A], 0x0"), parse("1500, 1980, 45, 300, 0x20")]
    assert summarize(states)["sm_clock_mhz"] == 1500.0 and summarize(states)["slowdowns"] == [
        "SW thermal slowdown"]


def test_a_watch_does_not_wait_long_for_a_slow_nvidia_smi(tmp_path, monkeypatch):
    import shutil
    import time

    from bench.gpu_state import Watch

    sleep = shutil.which("sleep")  # by its full path: PATH will hold only the fake
    count = _fake_smi(tmp_path, ["1980, 1980, 50, 400, 0x0"])
    fake = tmp_path / "nvidia-smi"
    # from the second call on, nvidia-smi takes 10 s (a busy driver): the block must not wait for it
    fake.write_text(fake.read_text().replace("case $n in", f'[ "$n" -ge 1 ] && {sleep} 10\ncase $n in'))
    monkeypatch.setenv("PATH", str(tmp_path))
    start = time.monotonic()
    with Watch("0", interval_s=0.01) as watch:
        deadline = time.monotonic() + 30  # a watch that stops sampling fails the test, not hangs it
        while int(count.read_text() or 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert time.monotonic() - start < 5 and watch.summary()["samples"] == 1


def test_the_summary_keeps_the_highest_max_clock_the_samples_reported():
    """The card's max SM clock (what `sm_clock_mhz` is read against) is the highest any sample gave: a
    sample taken while the driver lowered it (a power cap) must not pass for the card's own."""
    from bench.gpu_state import summarize

    base = {"sm_clock_mhz": 1400.0, "temperature_c": 60.0, "power_w": 500.0, "event_reasons": "0x0",
            "slowdowns": []}
    state = summarize([{**base, "max_sm_clock_mhz": 1980.0}, {**base, "max_sm_clock_mhz": 1500.0}])
    assert state["max_sm_clock_mhz"] == 1980.0 and state["min_sm_clock_mhz"] == 1400.0
