"""bench.compile_stats: what torch.compile did in a case, read from dynamo's counters and inductor's
CUDA-graph log (a CUDA-graph row whose graphs were skipped says so)."""

import json

import pytest
import torch

from bench.compile_stats import CompileWatch
from reports.tables import fmt_compile


@pytest.fixture
def quiet_logs():
    yield
    import torch._inductor.cudagraph_utils as cudagraph_utils

    torch._logging.set_logs()  # back to the defaults
    for handler in list(cudagraph_utils.cudagraphs_log.handlers):
        if type(handler).__name__ == "_Collect":
            cudagraph_utils.cudagraphs_log.removeHandler(handler)


def _with_a_break(x):
    y = x.sin()
    torch._dynamo.graph_break()
    return y.cos()


def test_graphs_and_breaks_of_a_compiled_variant_and_nothing_for_eager():
    assert CompileWatch(None).fields() == {}
    watch = CompileWatch("default")  # counts from here: what ran before is not the case's
    compiled = torch.compile(_with_a_break, backend="eager")
    compiled(torch.randn(3))
    assert watch.fields() == {"compile_stats": {"graphs": 2, "graph_breaks": 1}}


def test_a_cuda_graph_mode_records_skips_and_their_reasons(quiet_logs):
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    watch = CompileWatch("reduce-overhead")
    assert watch.fields()["compile_stats"]["cudagraph_skips"] == 0
    # what inductor calls when it will not capture a graph (here by hand: this machine has no CUDA)
    for _ in range(2):
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (1 instances)")
    stats = watch.fields()["compile_stats"]
    assert stats["cudagraph_skips"] == 2
    assert stats["cudagraph_skip_reasons"] == ["skipping cudagraphs due to mutated inputs (1 instances)"]
    import torch._inductor.cudagraph_utils as cudagraph_utils

    cudagraph_utils.cudagraphs_log.info("recording cudagraph tree for graph without symints")  # no skip
    assert len(watch.fields()["compile_stats"]["cudagraph_skip_reasons"]) == 1


def test_the_report_cell_says_whether_cuda_graphs_ran():
    assert fmt_compile(None) == ""
    assert fmt_compile({"graphs": 1, "graph_breaks": 0}) == "1 graph, 0 breaks"
    full = {"graphs": 3, "graph_breaks": 2, "cudagraph_skips": 0}
    assert fmt_compile(full) == "3 graphs, 2 breaks, CUDA graphs ✓"
    cell = fmt_compile({"graphs": 1, "graph_breaks": 0, "cudagraph_skips": 2,
                        "cudagraph_skip_reasons": ["skipping cudagraphs due to cpu device (arange)"]})
    assert cell == ("1 graph, 0 breaks, CUDA graphs SKIPPED ×2 "
                    "(skipping cudagraphs due to cpu device (arange))")


def test_compiled_training_and_inference_rows_carry_their_compile_stats_into_the_report(tmp_path):
    from segbench.cli import main

    suite = tmp_path / "compiled.toml"
    suite.write_text('''name = "compiled"
description = "one compiled training step and one compiled sliding-window inference"
device = "cpu"
timeout_s = 240

[measure]
warmup = 1
iters = 2
parity_steps = 1

[[workload]]
kind = "train_step"
model = "unet"
model_options = { channels = [4, 8], strides = [2], num_res_units = 1 }
shape = [16, 16, 16]
variants = ["compile"]

[[workload]]
kind = "infer"
model = "unet"
model_options = { channels = [4, 8], strides = [2], num_res_units = 1 }
volume = [24, 24, 16]
roi = [16, 16, 16]
sw_batch_size = 2
variants = ["compile"]
''')
    out = tmp_path / "run"
    assert main(["bench", "--suite", str(suite), "--out", str(out)]) == 0
    rows = {r["kind"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for row in rows.values():
        assert row["status"] == "ok", row.get("error")
    # MONAI's UNet compiles whole: one graph, no breaks (no CUDA-graph mode: no skip count); inference
    # may compile again for a smaller last window batch, never breaking
    assert rows["train_step"]["compile_stats"] == {"graphs": 1, "graph_breaks": 0}
    assert rows["infer"]["compile_stats"]["graph_breaks"] == 0
    report = (out / "report.md").read_text()
    assert "| compile |" in report and "| 1 graph, 0 breaks |" in report
