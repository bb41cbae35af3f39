"""The diagnostics a case runs after its timing (profile, attention kernels) never cost the row."""

from types import SimpleNamespace

import torch

from bench.workloads.common import attention_kernels_fields, profile_fields


def _case(tmp_path, steps: int):
    return SimpleNamespace(
        measure=SimpleNamespace(profile_steps=steps),
        cache_dir=str(tmp_path / "run" / "cache"),
        workload="w",
        variant="bf16+compile:max-autotune",
    )


def test_profile_fields_trace_the_step_into_the_run_folder(tmp_path):
    a = torch.randn(64, 64)
    calls = []
    fields = profile_fields(_case(tmp_path, 2), lambda: calls.append(a @ a), torch.device("cpu"))
    prof = fields["profile"]
    assert len(calls) == 3  # one traced warm-up step, then the 2 recorded
    assert prof["dir"] == "profiles/w__bf16+compile_max-autotune" and prof["steps"] == 2
    assert (tmp_path / "run" / prof["dir"] / "summary.json").is_file()
    assert prof["ms_per_step_by_category"]["matmul"] > 0
    assert prof["top_kernels"][0]["name"] in ("aten::mm", "aten::matmul")
    assert prof["top_kernels"][0]["calls_per_step"] == 1


def test_a_failing_diagnostic_is_noted_not_raised(tmp_path):
    def boom():
        raise RuntimeError("out of memory")

    assert profile_fields(_case(tmp_path, 1), boom, torch.device("cpu")) == {
        "profile_error": "RuntimeError: out of memory"
    }
    assert attention_kernels_fields(boom) == {"attention_kernels_error": "RuntimeError: out of memory"}
    assert profile_fields(_case(tmp_path, 0), boom, torch.device("cpu")) == {}  # not asked for
