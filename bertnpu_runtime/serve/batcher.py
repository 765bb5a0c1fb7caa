"""One queue for every client's texts, run through the encoder as few, full batches.

Requests from the event loop join the queue; a worker thread takes everything queued, up to
`max_batch_tokens` tokens (at least one request), waiting at most `max_wait_s` after the oldest
request arrived for more to come, and runs them as one `encode()` while the next batch gathers.
`workers` such calls run at once (the backend's hint `concurrent_calls`), so that the encoder
always has one call's batches to run while another call embeds and pools.
Each request's vectors go back to its asyncio future. When a batch of several requests fails with
a transient device fault (BackendCallError), each request is run again alone, so one request fails
only when its own texts cannot be encoded. The queue holds at most
`max_queue_requests` requests: one more is refused at once (QueueFull), so overload never grows
memory. A vector does not depend on which other requests shared its batch beyond float rounding.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import BackendCallError
from ..tokenize import TokenRows


class QueueFull(Exception):
    """The batcher's queue holds max_queue_requests requests already."""


@dataclass
class _Job:
    rows: TokenRows  # the request's texts, tokenized
    tokens: int
    future: asyncio.Future
    on_start: Callable[[float], None]  # told the monotonic time its batch started
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Batches requests across clients for `encode` (token rows -> float32 [n, dim]). Thread-safe."""

    def __init__(
        self,
        encode: Callable[[TokenRows], np.ndarray],
        *,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue_requests: int,
        workers: int = 1,
    ) -> None:
        self.workers = workers
        self._encode = encode
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_requests = max_queue_requests
        self._jobs: deque[_Job] = deque()
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closing = False
        self._running = 0  # requests inside an encode()
        self._threads = [
            threading.Thread(target=self._run, name=f"bertnpu-batcher-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued_requests(self) -> int:
        return len(self._jobs)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being encoded."""
        with self._cond:
            return not self._jobs and not self._running

    def fail_queued(self, error: BaseException) -> int:
        """Fail every queued request with `error` (a stop that cannot wait); returns how many."""
        with self._cond:
            jobs, self._jobs = list(self._jobs), deque()
            self._queued_tokens = 0
        _fail(jobs, error)
        return len(jobs)

    def submit(self, rows: TokenRows, on_start: Callable[[float], None] = lambda started: None) -> asyncio.Future:
        """Queue one request's token rows; await the future for their vectors. `on_start` is told
        when the batch that holds them starts (for timing). Call from the running event loop.
        Raises QueueFull when the queue is full."""
        loop = asyncio.get_running_loop()
        job = _Job(rows, int(rows.lengths.sum()), loop.create_future(), on_start, loop)
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is closed")
            if len(self._jobs) >= self.max_queue_requests:
                raise QueueFull(f"{len(self._jobs)} requests are queued, this server's limit")
            self._jobs.append(job)
            self._queued_tokens += job.tokens
            self._cond.notify()
        return job.future

    def close(self, timeout_s: float = 60.0) -> None:
        """Run what is queued, then stop the worker (waiting at most `timeout_s`)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._encode_and_settle(batch)
            finally:
                with self._cond:
                    self._running -= len(batch)

    def _drop_abandoned(self) -> None:
        """Take the requests of clients that went away off the queue (holding self._cond): their
        texts never reach the encoder."""
        if any(map(_abandoned, self._jobs)):
            dropped = [job for job in self._jobs if _abandoned(job)]
            self._jobs = deque(job for job in self._jobs if not _abandoned(job))
            self._queued_tokens -= sum(job.tokens for job in dropped)

    def _encode_and_settle(self, batch: list[_Job]) -> None:
        """Encode the batch's requests together and hand each its vectors, or the error."""
        try:
            vectors = self._encode(TokenRows.concatenate([job.rows for job in batch]))
        except BackendCallError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
            else:  # one faulty call must not fail the requests that shared its batch
                for job in batch:
                    self._encode_and_settle([job])
            return
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
            _fail(batch, exc)
            return
        start = 0
        for job in batch:
            end = start + len(job.rows)
            job.loop.call_soon_threadsafe(_settle, job.future, vectors[start:end], None)
            start = end

    def _next_batch(self) -> list[_Job] | None:
        """The requests of the next encode(): all queued up to the token budget, once the budget is
        met, the oldest has waited max_wait_s, or the batcher is closing. None when closed and empty."""
        with self._cond:
            while True:
                self._drop_abandoned()
                while not self._jobs:
                    if self._closing:
                        return None
                    self._cond.wait()
                    self._drop_abandoned()
                deadline = self._jobs[0].arrived + self.max_wait_s
                while self._queued_tokens < self.max_batch_tokens and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                self._drop_abandoned()
                if self._jobs:
                    break
            batch = [self._jobs.popleft()]
            tokens = batch[0].tokens
            while self._jobs and tokens + self._jobs[0].tokens <= self.max_batch_tokens:
                tokens += self._jobs[0].tokens
                batch.append(self._jobs.popleft())
            self._queued_tokens -= tokens
            self._running += len(batch)
            started = time.monotonic()
            for job in batch:
                job.on_start(started)
            return batch


def _abandoned(job: _Job) -> bool:
    """Its request was cancelled (the client went away) before any batch took it."""
    return job.future.cancelled()


def _settle(future: asyncio.Future, result: np.ndarray | None, error: BaseException | None) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _fail(jobs: list[_Job], error: BaseException) -> None:
    for job in jobs:
        job.loop.call_soon_threadsafe(_settle, job.future, None, error)
