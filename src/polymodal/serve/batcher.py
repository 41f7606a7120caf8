"""Admission to a bounded queue, and dynamic batching of the admitted requests onto one inference thread.

Everything here runs on the event loop except the model call, which runs on a single dedicated thread: torch
releases the GIL inside its kernels, so the loop keeps accepting, decoding and answering requests meanwhile, and
one model call at a time is what a CPU (or one GPU) does best anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from ._metrics import Metrics

log = logging.getLogger(__name__)


class DeadlineExceeded(Exception):
    """The request's deadline passed before its result was ready."""


class InferenceFailed(Exception):
    """The model raised on this request's input (a server error: its input had passed every check)."""


class Ticket:
    """One admitted request: holds a queue place until it enters a batch, and counts as in flight until it ends."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self.queued = True
        self.finished = False

    def leave_queue(self) -> None:
        if self.queued:
            self.queued = False
            self._admission.waiting -= 1
            self._admission.metrics.queue_depth.set(self._admission.waiting)

    def finish(self) -> None:
        self.leave_queue()
        if not self.finished:
            self.finished = True
            self._admission.in_flight -= 1
            self._admission.metrics.in_flight.set(self._admission.in_flight)


class Admission:
    """The bounded queue's gate: admits while fewer than ``max_queue`` requests wait for a batch.

    A request is admitted before its body is read or any media decoded, so an overloaded server refuses work
    for the price of reading the headers.
    """

    def __init__(self, max_queue: int, metrics: Metrics):
        self.max_queue = max_queue
        self.metrics = metrics
        self.waiting = 0  # admitted, not yet in a batch (decoding, or queued)
        self.in_flight = 0  # admitted, not yet answered

    def try_admit(self) -> Ticket | None:
        if self.waiting >= self.max_queue:
            return None
        self.waiting += 1
        self.in_flight += 1
        self.metrics.queue_depth.set(self.waiting)
        self.metrics.in_flight.set(self.in_flight)
        return Ticket(self)


@dataclass
class _Item:
    payload: Any
    ticket: Ticket
    deadline: float  # time.monotonic() seconds
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Groups queued requests into batches of up to ``max_batch_size``, waiting at most ``max_delay_ms`` for more.

    ``fn`` maps a list of payloads to a list of results of the same length; it runs on ``executor``.
    """

    def __init__(self, name: str, fn: Callable[[list[Any]], list[Any]], executor: Executor, max_batch_size: int,
                 max_delay_ms: float, metrics: Metrics):
        self.name = name
        self._fn = fn
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_ms / 1000
        self._metrics = metrics
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()

    async def submit(self, payload: Any, ticket: Ticket, deadline: float) -> Any:
        """Queue one request and wait for its result.

        Raises:
            DeadlineExceeded: the deadline passed first; the request is dropped from the queue (or, if already
                running, its result is discarded).
            InferenceFailed: the model raised on this input.
        """
        future = asyncio.get_running_loop().create_future()
        item = _Item(payload, ticket, deadline, future)
        self._queue.put_nowait(item)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            future.cancel()  # the worker skips cancelled items when it forms a batch
            ticket.leave_queue()
            raise DeadlineExceeded from None

    async def run(self) -> None:
        """The worker loop; survives any error of a batch, ends only when cancelled."""
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                await self._run_batch(batch)
            except Exception:  # never let one batch end the worker
                log.exception("%s: batch of %d failed", self.name, len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(InferenceFailed("inference failed"))

    async def _next_batch(self) -> list[_Item]:
        batch = [await self._queue.get()]
        until = time.monotonic() + self._max_delay_s
        while len(batch) < self._max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = until - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=left))
            except asyncio.TimeoutError:
                break
        now = time.monotonic()
        live = [i for i in batch if not i.future.done() and i.deadline > now]
        for item in live:
            item.ticket.leave_queue()
            self._metrics.queue_seconds.labels(self.name).observe(now - item.enqueued)
        return live

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        self._metrics.batch_size.labels(self.name).observe(len(batch))
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._fn, [i.payload for i in batch])
        except Exception:
            if len(batch) == 1:
                raise
            # One bad input should fail alone, not take its batch-mates down with it.
            log.warning("%s: batch of %d failed; retrying its requests one by one", self.name, len(batch), exc_info=True)
            for item in batch:
                try:
                    await self._run_batch([item])
                except Exception:
                    log.exception("%s: a request failed in inference", self.name)
                    if not item.future.done():
                        item.future.set_exception(InferenceFailed("inference failed on this input"))
            return
        self._metrics.inference_seconds.labels(self.name).observe(time.perf_counter() - start)
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)
