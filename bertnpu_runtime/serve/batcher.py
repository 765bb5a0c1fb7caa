"""One queue for every client's texts, run through the encoder as few, full batches, fairly.

A worker thread takes queued texts up to `max_batch_tokens` tokens, waiting at most `max_wait_s`
after the oldest request arrived for more to come, and runs them as one `encode()` while the next
batch gathers. A request larger than a batch runs as several pieces. Requests take turns: while
requests that have not started wait, the next batch is theirs (fewest texts first), with one text of
the longest-waiting started request when no batch of started requests is running; else the started
requests fill it, each giving the texts that fit in the room left, and one with texts left goes to
the back of the queue. So a one-sentence request runs in a small batch, not behind the whole of a
big request, and small requests slow a big one, never stop it.
`workers - 1` such calls run at once (the backend's hint `concurrent_calls`, so that the encoder
always has one call's batches to run while another call embeds and pools); the last worker is kept
for requests that have not started, and runs only while a call of started requests' pieces does: so
a request that arrives under a big one finds a worker free, and its call goes before the batches the
big one queued on the encoder (call_tokens).
When a call that answered requests ends while another runs, the next call waits at most `hold_s`
for their clients to send as many tokens again: a closed loop of clients comes back within a few milliseconds, and their
texts join the queued ones in one larger call, whose batches hold more sentences of like length
(64 one-sentence clients: calls of 29 texts instead of 20). The other call's batches keep the
encoder busy meanwhile; with no other call running, nothing waits.
A request's vectors go back to its asyncio future once all its pieces ran. When a batch of several
pieces fails with a transient device fault (BackendCallError), each piece is run again alone, so a
request fails only when its own texts cannot be encoded. The queue holds at most
`max_queue_requests` requests and `max_queue_tokens` tokens (the token rows, 8 bytes a token): one
more is refused at once (QueueFull), so overload never grows memory. A vector does not depend on
which other requests shared its batch beyond float rounding."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import BackendCallError
from ..tokenize import TokenRows


class QueueFull(Exception):
    """The batcher's queue holds max_queue_requests requests, or max_queue_tokens tokens, already."""


@dataclass(eq=False)
class _Request:
    """One client's request: its texts not yet taken by a batch, and the outputs of those that ran."""

    rows: TokenRows
    future: asyncio.Future
    on_start: Callable[[float], None]  # told the monotonic time its first batch started
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)
    next_text: int = 0  # the first text no batch has taken
    outputs: dict[int, np.ndarray] = field(default_factory=dict)  # by a piece's first text
    encoded: int = 0  # texts whose outputs are in
    failed: bool = False
    token_ends: list[int] = field(init=False)  # tokens up to and with each text (Python ints: cheaper here)

    def __post_init__(self) -> None:
        self.token_ends = list(itertools.accumulate(self.rows.lengths.tolist()))

    @property
    def started(self) -> bool:
        return self.next_text > 0

    @property
    def queued(self) -> bool:
        return self.next_text < len(self.rows)

    @property
    def queued_tokens(self) -> int:
        return self._tokens_before(len(self.rows)) - self._tokens_before(self.next_text)

    @property
    def queued_texts(self) -> int:
        return len(self.rows) - self.next_text

    @property
    def next_text_tokens(self) -> int:
        return int(self.rows.lengths[self.next_text])

    def _tokens_before(self, text: int) -> int:
        return self.token_ends[text - 1] if text else 0

    def take(self, room: int, at_least_one: bool) -> _Piece | None:
        """Its next texts that fit in `room` tokens (at least one text when `at_least_one`)."""
        limit = self._tokens_before(self.next_text) + room
        end = bisect.bisect_right(self.token_ends, limit)
        if end <= self.next_text:
            if not at_least_one:
                return None
            end = self.next_text + 1
        whole = self.next_text == 0 and end == len(self.rows)
        rows = self.rows if whole else self.rows.slice(self.next_text, end)
        piece = _Piece(self, self.next_text, rows, self._tokens_before(end) - self._tokens_before(self.next_text))
        self.next_text = end
        return piece


@dataclass(eq=False)
class _Piece:
    """Some of a request's texts, in order, taken by one batch."""

    request: _Request
    first: int  # the request's index of its first text
    rows: TokenRows
    tokens: int

    @property
    def last(self) -> bool:
        """It holds the request's last texts: its answer goes out when it ends."""
        return self.first + len(self.rows) == len(self.request.rows)


class Batcher:
    """Batches requests across clients for `encode` (token rows -> float32 [n, dim]). Thread-safe."""

    def __init__(
        self,
        encode: Callable[[TokenRows], np.ndarray],
        *,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue_requests: int,
        max_queue_tokens: int | None = None,
        workers: int = 1,
        hold_s: float = 0.0,
        on_dropped: Callable[[int], None] = lambda texts: None,
    ) -> None:
        self.workers = workers
        self._encode = encode
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.hold_s = hold_s
        self.max_queue_requests = max_queue_requests
        self.max_queue_tokens = max_queue_tokens if max_queue_tokens is not None else 64 * max_batch_tokens
        self._on_dropped = on_dropped
        self._requests: deque[_Request] = deque()  # those with texts queued, in turn order
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closing = False
        self._running = 0  # pieces inside an encode()
        self._calls = 0  # encode() calls running
        self._started_only_calls = 0  # of which, those that hold only started requests' texts
        self._held_until = 0.0  # after a call ended while another runs: the next waits until then,
        self._awaited_tokens = 0  # or until this many tokens are queued
        self._threads = [
            threading.Thread(target=self._run, name=f"bertnpu-batcher-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued_requests(self) -> int:
        return len(self._requests)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being encoded."""
        with self._cond:
            return not self._requests and not self._running

    def fail_queued(self, error: BaseException) -> int:
        """Fail every queued request with `error` (a stop that cannot wait); returns how many."""
        with self._cond:
            requests, self._requests = list(self._requests), deque()
            self._queued_tokens = 0
            for request in requests:
                request.next_text = len(request.rows)
        for request in requests:
            _fail(request, error)
        return len(requests)

    def submit(self, rows: TokenRows, on_start: Callable[[float], None] = lambda started: None) -> asyncio.Future:
        """Queue one request's token rows; await the future for their vectors. `on_start` is told
        when the first batch that holds some of them starts (for timing). Call from the running
        event loop. Raises QueueFull when the queue is full."""
        loop = asyncio.get_running_loop()
        request = _Request(rows, loop.create_future(), on_start, loop)
        tokens = request.queued_tokens
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is closed")
            if len(self._requests) >= self.max_queue_requests:
                raise QueueFull(f"{len(self._requests)} requests are queued, this server's limit")
            if self._requests and self._queued_tokens + tokens > self.max_queue_tokens:
                raise QueueFull(f"{self._queued_tokens} tokens are queued; this request's {tokens} pass the limit")
            self._requests.append(request)
            self._queued_tokens += tokens
            if self._may_take():  # else no waiting worker could take it: a running one will, when done
                self._cond.notify()
        return request.future

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
                self._encode_and_settle(batch.pieces)
            finally:
                with self._cond:  # this worker goes back for queued work itself: no other to wake
                    self._running -= len(batch.pieces)
                    self._calls -= 1
                    self._started_only_calls -= batch.started_only
                    answered = sum(piece.tokens for piece in batch.pieces if piece.last)
                    if self.hold_s and self._calls and answered:  # their clients' next requests may join
                        self._held_until = time.monotonic() + self.hold_s
                        self._awaited_tokens = self._queued_tokens + answered

    def _may_take(self) -> bool:
        """Whether this worker may form a batch now (holding self._cond): while fewer than
        workers - 1 calls run; else only for requests that have not started, while a call of
        started requests' pieces runs (the worker kept for them)."""
        if self.workers == 1 or self._calls < self.workers - 1:
            return True
        return self._started_only_calls > 0 and any(not request.started for request in self._requests)

    def _drop(self, dropped: list[_Request]) -> None:
        """Take these requests' queued texts off the queue (holding self._cond)."""
        if dropped:
            self._requests = deque(request for request in self._requests if request not in dropped)
            for request in dropped:
                self._queued_tokens -= request.queued_tokens
                request.next_text = len(request.rows)

    def _drop_abandoned(self) -> None:
        """Take the requests of clients that went away off the queue (holding self._cond): their
        queued texts never reach the encoder; pieces already running finish."""
        abandoned = [request for request in self._requests if request.future.cancelled()]
        if abandoned:
            texts = sum(request.queued_texts for request in abandoned)
            self._drop(abandoned)
            self._on_dropped(texts)

    def _encode_and_settle(self, batch: list[_Piece]) -> None:
        """Encode the batch's pieces together and hand each its vectors, or the error."""
        try:
            vectors = self._encode(TokenRows.concatenate([piece.rows for piece in batch]))
        except BackendCallError as exc:
            if len(batch) == 1:
                self._fail_request(batch[0].request, exc)
            else:  # one faulty call must not fail the requests that shared its batch
                for piece in batch:
                    self._encode_and_settle([piece])
            return
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
            for request in {id(piece.request): piece.request for piece in batch}.values():
                self._fail_request(request, exc)
            return
        answers: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, np.ndarray]]] = {}
        start = 0
        for piece in batch:
            end = start + len(piece.rows)
            result = self._piece_done(piece, vectors[start:end])
            if result is not None:
                answers.setdefault(piece.request.loop, []).append((piece.request.future, result))
            start = end
        for loop, settled in answers.items():  # one wake-up of the event loop for the whole batch
            loop.call_soon_threadsafe(_settle_all, settled)

    def _piece_done(self, piece: _Piece, vectors: np.ndarray) -> np.ndarray | None:
        """Keep a piece's vectors; the request's outputs once all its pieces are in, else None."""
        request = piece.request
        if len(piece.rows) == len(request.rows):  # the whole request, in one piece
            return vectors
        with self._cond:
            request.outputs[piece.first] = vectors
            request.encoded += len(piece.rows)
            if request.encoded < len(request.rows) or request.failed:
                return None
        outputs = [request.outputs[first] for first in sorted(request.outputs)]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _fail_request(self, request: _Request, error: BaseException) -> None:
        """Its other queued pieces are dropped: the request has failed."""
        with self._cond:
            request.failed = True
            self._drop([request])
        _fail(request, error)

    def _next_batch(self) -> _Batch | None:
        """The pieces of the next encode(): up to the token budget, once the budget is met, the
        oldest request has waited max_wait_s, or the batcher is closing; after a call ended while
        another runs, not before as many tokens as it held are queued again or hold_s has passed
        (see the module's docstring). None when closed and empty.
        While requests that have not started wait, the batch is theirs (fewest texts first), with
        room for one text of the longest-waiting started request if none of theirs is running;
        else the started ones fill it in turn."""
        with self._cond:
            while True:
                while not self._requests or not self._may_take():
                    if self._closing and not self._requests:
                        return None
                    self._cond.wait()
                    self._drop_abandoned()
                deadline = self._requests[0].arrived + self.max_wait_s
                while self._queued_tokens < self.max_batch_tokens and not self._closing:
                    until = deadline
                    if self._calls and self._queued_tokens < self._awaited_tokens:
                        until = max(deadline, self._held_until)
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                self._drop_abandoned()
                if self._requests and self._may_take():  # other workers may have taken work meanwhile
                    break
            fresh: list[_Request] = []
            under_way: list[_Request] = []
            for request in self._requests:
                (under_way if request.started else fresh).append(request)
            fresh.sort(key=_size)
            if fresh:  # a quick batch for them, with one text of the longest-waiting started request
                # Started requests need a text of theirs here only while none of theirs is running.
                reserve = under_way[0].next_text_tokens if under_way and not self._started_only_calls else 0
                batch = _take_in_turn(fresh, self.max_batch_tokens - reserve)
                room = self.max_batch_tokens - sum(piece.tokens for piece in batch)
                batch += _take_in_turn(under_way[:1], min(reserve, room), at_least_one=False)
            else:
                batch = _take_in_turn(under_way, self.max_batch_tokens)
            tokens = sum(piece.tokens for piece in batch)
            took = [piece.request for piece in batch]
            took_ids = {id(request) for request in took}  # a set: the queue may hold 1,024 requests
            self._requests = deque(
                [request for request in self._requests if id(request) not in took_ids] + [r for r in took if r.queued]
            )
            self._queued_tokens -= tokens
            self._awaited_tokens = 0  # the hold, if any, ends with this call
            self._running += len(batch)
            self._calls += 1
            started_only = all(piece.first > 0 for piece in batch)  # of requests that had started before it
            self._started_only_calls += started_only
            if self._requests and self._may_take():  # work this worker left that another may take now
                self._cond.notify()
            started = time.monotonic()
            for piece in batch:
                if piece.first == 0:  # the request's first batch
                    piece.request.on_start(started)
            return _Batch(batch, started_only)


class _Batch(NamedTuple):
    """The pieces of one encode() call."""

    pieces: list[_Piece]
    started_only: bool  # it holds only texts of requests that had started before it


def _size(request: _Request) -> int:
    return len(request.rows)


def _take_in_turn(requests: list[_Request], budget: int, at_least_one: bool = True) -> list[_Piece]:
    """One piece from each request in turn, the texts that fit in what is left of `budget` tokens
    (the first piece at least one text, when `at_least_one`)."""
    pieces: list[_Piece] = []
    tokens = 0
    for request in requests:
        piece = request.take(budget - tokens, at_least_one=at_least_one and not pieces)
        if piece is not None:
            pieces.append(piece)
            tokens += piece.tokens
            if tokens >= budget:
                break
    return pieces


def _settle(future: asyncio.Future, result: np.ndarray | None, error: BaseException | None) -> None:
    if future.done():  # the client went away and its request was cancelled, or a piece failed it
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _settle_all(settled: list[tuple[asyncio.Future, np.ndarray]]) -> None:
    for future, result in settled:
        _settle(future, result, None)


def _fail(request: _Request, error: BaseException) -> None:
    request.loop.call_soon_threadsafe(_settle, request.future, None, error)
