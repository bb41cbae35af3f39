"""A failed case names where it failed and, for known failures, what to try (bench.hints)."""

import pytest
import torch

from bench.case import error_message
from bench.hints import error_at, hint_for


def test_an_inductor_failure_is_traced_to_its_pass_and_gets_its_hint(monkeypatch):
    """The failure ANCHORS.md records for MONAI UNet + bf16 compile on an H100 ("1 v.s. 4"), raised
    here from inside inductor's scheduler on the CPU: the row names the pass, not only the message."""
    import torch._inductor.scheduler as scheduler

    def get_numel_rnumel(self, *args, **kwargs):  # where the real assertion is raised
        raise AssertionError("1 v.s. 4")

    monkeypatch.setattr(scheduler.Scheduler, "__init__", get_numel_rnumel)
    torch._dynamo.reset()
    with pytest.raises(Exception) as caught:
        torch.compile(lambda x: (x * 2).sum(1))(torch.randn(8, 8))
    torch._dynamo.reset()
    message, where = error_message(caught.value), error_at(caught.value)
    assert message == "InductorError: AssertionError: 1 v.s. 4"  # dynamo's advice lines dropped
    assert where.endswith("test_hints.py:get_numel_rnumel")  # the innermost frame, through the wrappers
    # as the real frame reads on a GPU machine
    hint = hint_for(message, "torch/_inductor/scheduler.py:get_numel_rnumel")
    assert hint is not None and "+inductor:triton.mix_order_reduction=0" in hint


@pytest.mark.parametrize(
    "error, expected",
    [
        ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "segbench footprint"),
        ("OutOfResources: out of resource: shared memory, Required: 262144, Hardware limit: 232448",
         "shared memory"),
        ("RuntimeError: shape mismatch", None),
    ],
)
def test_hints_match_known_failures_only(error, expected):
    hint = hint_for(error)
    assert hint is None if expected is None else expected in hint
