"""What torch.compile did in a case: graphs, graph breaks and, in a CUDA-graph mode, whether inductor
skipped the CUDA graphs (a `compile:reduce-overhead` row then times the plain compiled step, and
says so instead of passing for one with graphs).

Dynamo's counters are process-wide; a case process compiles only its variant's model (the reference
and the interleaved baseline run eagerly), so after its steps they describe that model.
"""

from __future__ import annotations

import logging

from seg.speed import CUDAGRAPH_MODES

REASONS_KEPT = 3
REASON_CHARS = 300


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "cudagraph" in message and ("skipping" in message or "disabling" in message):
            self.into.append(message[:REASON_CHARS])


class CompileWatch:
    """Start before a compiled variant's first step, read `fields()` after its last one."""

    def __init__(self, compile_mode: str | None) -> None:
        self.compile_mode = compile_mode
        self.reasons: list[str] = []
        if compile_mode is None:
            return
        from torch._dynamo.utils import counters

        counters.clear()
        if compile_mode in CUDAGRAPH_MODES:
            import torch
            import torch._inductor.cudagraph_utils as cudagraph_utils

            # inductor logs why it skips CUDA graphs only to its "cudagraphs" log, off by default:
            # on, the reasons reach the case log and the row (a private logger: a torch without it
            # leaves the count alone, which is what matters, rather than fail the row)
            log = getattr(cudagraph_utils, "cudagraphs_log", None)
            if log is not None:
                torch._logging.set_logs(cudagraphs=True)
                log.addHandler(_Collect(self.reasons))

    def fields(self) -> dict:
        """`{"compile_stats": {graphs, graph_breaks[, cudagraph_skips, cudagraph_skip_reasons]}}`, or {}
        for an eager variant."""
        if self.compile_mode is None:
            return {}
        from torch._dynamo.utils import counters

        stats = {
            "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
        }
        if self.compile_mode in CUDAGRAPH_MODES:
            stats["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
            if self.reasons:
                stats["cudagraph_skip_reasons"] = list(dict.fromkeys(self.reasons))[:REASONS_KEPT]
        return {"compile_stats": stats}
