"""Server-side batching: concurrent requests for one model version share an inference.

A GPU runs one batch of 16 tiles in about the time of one tile, so requests for the same
signature whose inputs agree on everything but dimension 0 are concatenated along axis 0 (up to
``max_batch_size`` items, waiting at most ``timeout`` after the first arrived), run once on one
of this version's worker threads, and the outputs are split back. With more than one worker
(``workers``), batches run side by side: on a CPU, one inference rarely keeps every core busy,
and concurrent consumers' requests otherwise queue behind each other. A request too large for
a batch, or one that cannot be batched, runs alone. If a shared batch fails, or its outputs are
not split by batch, each request is run again alone so that one bad request cannot fail its
neighbours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
RunFn = Callable[[str, Arrays], Arrays]


class BatcherClosed(RuntimeError):
    """The version is being unloaded; look it up again."""


@dataclass(eq=False)
class _Request:
    signature: str
    inputs: Arrays
    items: int  # size along axis 0 (1 for a request that runs alone)
    batchable: bool
    arrived: float
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> Hashable:
        if not self.batchable:
            return None
        return (
            self.signature,
            tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in self.inputs.items())),
        )


class Batcher:
    """Queues requests for one model version and runs them, batched, on ``workers`` threads."""

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int,
        timeout: float,
        name: str = "model",
        on_batch: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.timeout = timeout
        self._on_batch = on_batch
        self._clock = clock
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"infer-{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, signature: str, inputs: Arrays, items: int | None) -> Future:
        """Queue a request; ``items`` is its size along axis 0, or None to run it alone.

        Cancel the future to drop a request that has not started (its client went away).
        """
        request = _Request(signature, inputs, items or 1, items is not None, self._clock())
        with self._cond:
            if self._closed:
                raise BatcherClosed("this model version is being unloaded")
            self._pending.append(request)
            self._cond.notify()
        return request.future

    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued ones, and stop the worker threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ worker thread

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._execute(batch)

    def _next_batch(self) -> list[_Request] | None:
        """The next batch to run ([] when the first request was cancelled; None to stop)."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._pending.popleft()
            if not first.future.set_running_or_notify_cancel():
                return []
            batch = [first]
            if not first.batchable or first.items >= self.max_batch_size:
                return batch
            total, key = first.items, first.key
            deadline = first.arrived + self.timeout
            while True:
                total, full = self._take_compatible(batch, key, total)
                remaining = deadline - self._clock()
                if full or remaining <= 0 or self._closed:
                    return batch
                self._cond.wait(remaining)

    def _take_compatible(
        self, batch: list[_Request], key: Hashable, total: int
    ) -> tuple[int, bool]:
        """Move queued requests that fit into ``batch``; True once no more can join it."""
        kept: deque[_Request] = deque()
        full = False
        while self._pending:
            request = self._pending.popleft()
            if full or request.key != key:
                kept.append(request)
            elif total + request.items > self.max_batch_size:
                kept.append(request)
                full = True
            elif request.future.set_running_or_notify_cancel():
                batch.append(request)
                total += request.items
        self._pending = kept
        return total, full or total >= self.max_batch_size

    def _execute(self, batch: list[_Request]) -> None:
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        sizes = [r.items for r in batch]
        total = sum(sizes)
        signature = batch[0].signature
        try:
            inputs = {
                name: np.concatenate([r.inputs[name] for r in batch]) for name in batch[0].inputs
            }
            outputs = self._call(signature, inputs, total)
        except Exception as exc:
            log.warning("a batch of %d requests failed (%s); running each alone", len(batch), exc)
            outputs = None
        if outputs is None or any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
            for request in batch:
                self._run_alone(request)
            return
        offsets = np.cumsum(sizes)[:-1]
        parts = {name: np.split(value, offsets) for name, value in outputs.items()}
        for i, request in enumerate(batch):
            request.future.set_result({name: pieces[i] for name, pieces in parts.items()})

    def _run_alone(self, request: _Request) -> None:
        try:
            result = self._call(request.signature, request.inputs, request.items)
        except Exception as exc:
            request.future.set_exception(exc)
        else:
            request.future.set_result(result)

    def _call(self, signature: str, inputs: Arrays, items: int) -> Arrays:
        if self._on_batch is not None:
            self._on_batch(items)
        return self._run(signature, inputs)
