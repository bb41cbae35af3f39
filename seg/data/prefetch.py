"""Producing batches ahead of their use: a background thread and, on CUDA, a side stream.

`Prefetcher(items, produce, device, depth)` runs `produce(item)` for each item in a thread, at
most `depth` finished batches ahead of the consumer. On CUDA the thread issues its work
(host-to-device copies, augmentation kernels) on its own stream and records an event per batch;
the consumer's stream waits for that event (no host sync), and every tensor of the batch is
`record_stream`-ed on the consumer's stream, so the caching allocator does not hand its memory
to the producer again before the consumer's kernels that read it have run. On the CPU the same
thread overlaps reading and augmenting with the consumer's work (torch ops release the GIL).
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

_END = object()
_POLL_S = 0.1
# producers still running: stopped at interpreter exit, where a daemon thread killed inside a torch op
# aborts the process ("terminate called without an active exception"); an endless iterator left open
# (a benchmark's) is never closed otherwise
_RUNNING: set[tuple[threading.Event, threading.Thread]] = set()


@atexit.register
def _stop_running() -> None:
    for stop, thread in list(_RUNNING):
        stop.set()
        thread.join(timeout=10)


class _Failure:
    def __init__(self, err: BaseException):
        self.err = err


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless the consumer has gone away (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def resolve_device(device: torch.device | str) -> torch.device:
    """`cuda` made explicit (`cuda:K`, the calling thread's current device): a producer thread
    has its own current device (0), so a bare `cuda` there could name another GPU under DDP."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    values = batch.values() if isinstance(batch, dict) else batch
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v


class Prefetcher:
    """Iterate `produce(item)` for `item in items`, produced `depth` batches ahead (0: inline)."""

    def __init__(self, items: Iterable, produce: Callable[[Any], Any], device: torch.device | str,
                 depth: int = 2):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.items, self.produce, self.device, self.depth = items, produce, resolve_device(device), depth

    def __iter__(self) -> Iterator[Any]:
        if self.depth == 0:
            for item in self.items:
                yield self.produce(item)
            return
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def work() -> None:
            try:
                with torch.cuda.device(self.device) if cuda else contextlib.nullcontext(), \
                        torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                    for item in self.items:
                        batch = self.produce(item)
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(stream)
                        if not _put(q, (batch, event), stop):
                            return
                _put(q, _END, stop)
            except BaseException as err:  # handed to the consumer, raised there
                _put(q, _Failure(err), stop)

        thread = threading.Thread(target=work, name="segbench-prefetch", daemon=True)
        thread.start()
        _RUNNING.add((stop, thread))
        try:
            while True:
                got = q.get()
                if got is _END:
                    return
                if isinstance(got, _Failure):
                    raise got.err
                batch, event = got
                if event is not None:
                    consumer = torch.cuda.current_stream(self.device)
                    consumer.wait_event(event)
                    for t in _tensors(batch):
                        if t.device.type == "cuda":
                            t.record_stream(consumer)
                yield batch
        finally:
            # A consumer that stops mid-epoch: the producer gives up within _POLL_S of its current
            # batch. Joined, so the next epoch never shares a (persistent) DataLoader iterator with it.
            stop.set()
            thread.join()
            _RUNNING.discard((stop, thread))
