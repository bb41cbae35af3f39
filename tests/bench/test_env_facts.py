"""What `segbench env` and env.json record about the machine, read from faked drivers and devices:
git state, the GPU as torch reports it, the features an older card lacks, nvidia-smi's field names."""

from __future__ import annotations

import stat
from types import SimpleNamespace

import pytest
import torch


def test_gpu_state_remembers_the_field_name_the_driver_answered(tmp_path, monkeypatch):
    from bench import gpu_state

    log = tmp_path / "calls"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$*" in *clocks_event_reasons*) exit 2;; esac
echo "1410, 1980, 83, 699.5, 0x0"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gpu_state, "_answered", [gpu_state.REASON_FIELDS[0]])
    for _ in range(3):
        assert gpu_state.sample("0")["sm_clock_mhz"] == 1410.0
    # first sample: new name refused, old name answered; later samples ask the old name at once
    assert len(log.read_text().splitlines()) == 4


@pytest.mark.parametrize("status, dirty", [("", False), (" M bench/env.py", True), (None, None)])
def test_env_git_dirty_is_whether_tracked_files_changed(monkeypatch, status, dirty):
    from bench import env

    monkeypatch.setattr(env, "_git", lambda *a: status if a[0] == "status" else "abc123")
    assert env.capture_host(["x"])["git"] == {"sha": "abc123", "dirty": dirty}


def test_env_device_facts_record_the_gpu_as_torch_reports_it(monkeypatch):
    from bench import env
    from profiles import attention_kernels

    props = SimpleNamespace(
        name="NVIDIA H100", total_memory=80 * 2**30, multi_processor_count=132, major=9, minor=0
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: props)
    monkeypatch.setattr(env, "_driver_version", lambda: "550.54")
    monkeypatch.setattr(attention_kernels, "sdpa_priority_order", lambda d: ["cudnn", "flash"])
    facts = env.device_facts("cuda")
    assert (
        facts["gpu"],
        facts["gpu_memory_bytes"],
        facts["gpu_sm_count"],
        facts["gpu_capability"],
        facts["driver"],
        facts["sdpa_order"],
    ) == ("NVIDIA H100", 80 * 2**30, 132, "9.0", "550.54", ["cudnn", "flash"])


def _fake_gpu(monkeypatch, capability):
    import torch.utils._triton

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)


@pytest.mark.parametrize("capability, ampere", [((7, 0), False), ((9, 0), True)])
def test_doctor_tf32_and_flash_need_sm80(monkeypatch, capability, ampere):
    from bench import doctor

    _fake_gpu(monkeypatch, capability)
    lines = {f.name: f for f in doctor.features("cuda")}
    assert lines["TF32"].ok == ampere
    assert lines["flash attention (SDPA)"].ok == ampere


def test_doctor_names_a_missing_python_h(monkeypatch, tmp_path):
    from bench import doctor

    _fake_gpu(monkeypatch, (9, 0))
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(doctor.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    assert doctor._triton_cuda_problem().startswith("no Python.h in")


@pytest.mark.parametrize("gib, hinted", [(8, True), (80, False)])
def test_doctor_hints_footprint_on_a_small_card_only(gib, hinted):
    from bench.doctor import EnvReport

    cal = {
        "gpu": "GPU",
        "gpu_memory_bytes": gib * 2**30,
        "gpu_capability": "8.6",
        "gpu_sm_count": 40,
        "torch_cuda": "12.4",
        "cudnn": 90100,
        "driver": "550",
    }
    text = EnvReport("cuda", {"versions": {}}, cal, []).render()
    assert ("a small card" in text) == hinted
