"""kernels.bench.copy_gb_per_s: what it copies."""

import torch

from kernels import bench


def test_copy_ceiling_reads_a_written_source(monkeypatch):
    # A never-written host buffer maps the shared zero page: copying it reads one cached page and
    # reports several times the real bandwidth. The copied data must be what was written.
    copied = []

    def one_call(step, device, **kwargs):
        copied.append(step())
        return [1.0]

    monkeypatch.setattr(bench, "time_step", one_call)
    rate = bench.copy_gb_per_s("cpu", nbytes=1 << 20)
    assert rate == 2 * (1 << 19) / 1e-3 / 1e9
    assert copied[0].numel() == 1 << 19 and bool((copied[0] == 1).all())
    assert copied[0].dtype == torch.uint8


def test_a_compiled_backward_runs_again_on_its_graph_as_the_timing_loop_needs():
    # AOTAutograd donates a compiled backward's saved buffers when it can; the timing loop calls the
    # backward again on one graph (retain_graph), which a donating backward refuses
    shape = (1, 8, 8, 8, 8)
    for layout in ("contiguous", "channels_last"):
        step = bench.make_step("compile", shape, "fp32", layout, "bwd", "cpu")
        step()
        dx, dw, db = step()
        want = bench.make_step("eager", shape, "fp32", layout, "bwd", "cpu")()
        torch.testing.assert_close(dx, want[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dw, want[1], rtol=1e-4, atol=1e-4)
