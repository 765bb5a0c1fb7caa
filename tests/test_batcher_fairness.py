"""The server's batcher under mixed load (#35): a big request runs as token-budget pieces that take
turns with other clients' requests, the queue is bounded in tokens, and a failing piece fails only
its own request. The encoder here returns each text's second token id, so order is checkable."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from bertnpu_runtime.serve.batcher import Batcher, QueueFull
from bertnpu_runtime.tokenize import TokenRows


def texts(first: int, count: int, length: int = 10) -> TokenRows:
    """`count` texts of `length` tokens whose second ids are first, first + 1, ..."""
    return TokenRows.from_lists([[101, first + i] + [7] * (length - 3) + [102] for i in range(count)], [False] * count)


class Recorder:
    """An encoder that records each call's second ids, optionally held at its first call."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()
        self.holding = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, rows: TokenRows) -> np.ndarray:
        second_ids = rows.ids[rows.starts + 1]
        if not self.calls:
            self.holding.set()
            assert self.release.wait(30)
        self.calls.append(second_ids.tolist())
        return second_ids[:, None].astype(np.float32)


@pytest.mark.parametrize("lengths", [[10] * 12, [3, 40, 5, 5, 5, 60, 2], [100]])
def test_a_request_runs_as_pieces_within_the_budget_covering_every_text_once(lengths):
    """Each text i is [CLS] i+1 ... [SEP], `lengths[i]` tokens; the budget is 32 tokens a batch."""
    rows = TokenRows.from_lists(
        [[101, i + 1] + [7] * (n - 3) + [102] for i, n in enumerate(lengths)], [False] * len(lengths)
    )
    recorder = Recorder()

    async def main() -> np.ndarray:
        batcher = Batcher(recorder, max_batch_tokens=32, max_wait_s=0, max_queue_requests=10)
        try:
            return await batcher.submit(rows)
        finally:
            batcher.close()

    assert asyncio.run(main())[:, 0].tolist() == list(range(1, len(lengths) + 1))
    assert [i for call in recorder.calls for i in call] == list(range(1, len(lengths) + 1))
    for call in recorder.calls:
        assert sum(lengths[i - 1] for i in call) <= 32 or len(call) == 1


async def _submit_while_held(batcher: Batcher, recorder: Recorder, first: TokenRows, then: list[TokenRows]) -> list:
    """Submit `first`, wait until the encoder holds its first batch, submit `then`, release."""
    futures = [batcher.submit(first)]
    await asyncio.to_thread(recorder.holding.wait, 30)
    futures += [batcher.submit(rows) for rows in then]
    recorder.release.set()
    return await asyncio.gather(*futures)


def test_a_small_request_waits_for_the_next_batch_not_for_a_big_one():
    recorder = Recorder(hold_first=True)

    async def main() -> list:
        batcher = Batcher(recorder, max_batch_tokens=50, max_wait_s=0, max_queue_requests=10)
        try:
            big = texts(1000, 40)  # 400 tokens: 8 batches' worth
            return await _submit_while_held(batcher, recorder, big, [texts(1100, 5), texts(2000, 1)])
        finally:
            batcher.close()

    big, second_big, small = asyncio.run(main())
    assert big[:, 0].tolist() == list(range(1000, 1040))  # whole and in order, from its pieces
    assert second_big[:, 0].tolist() == list(range(1100, 1105))
    assert small[:, 0].tolist() == [2000]
    calls = recorder.calls
    assert all(len(call) <= 5 for call in calls)  # 50 tokens a batch
    # requests that have not started go first, fewest texts first, with one text of the started one
    assert calls[1] == [2000, 1100, 1101, 1102, 1005], calls
    # then the started ones take turns filling batches: the other one's last two texts, the big one
    assert calls[2] == [1103, 1104, 1006, 1007, 1008], calls


def test_the_queue_is_bounded_in_tokens():
    recorder = Recorder(hold_first=True)

    async def main() -> None:
        batcher = Batcher(recorder, max_batch_tokens=50, max_wait_s=0, max_queue_requests=100, max_queue_tokens=200)
        try:
            held = batcher.submit(texts(0, 1))
            await asyncio.to_thread(recorder.holding.wait, 30)
            queued = [batcher.submit(texts(100 * n, 5)) for n in range(1, 5)]  # 4 x 50 tokens: the limit
            with pytest.raises(QueueFull, match="200 tokens are queued; this request's 10 pass the limit"):
                batcher.submit(texts(900, 1))
            assert batcher.queued_tokens == 200
            recorder.release.set()
            await asyncio.gather(held, *queued)
            assert batcher.queued_tokens == 0
        finally:
            batcher.close()

    asyncio.run(main())


def test_a_request_larger_than_the_token_limit_runs_when_the_queue_is_empty():
    recorder = Recorder()

    async def main() -> np.ndarray:
        batcher = Batcher(recorder, max_batch_tokens=50, max_wait_s=0, max_queue_requests=10, max_queue_tokens=100)
        try:
            return await batcher.submit(texts(0, 30))  # 300 tokens
        finally:
            batcher.close()

    assert asyncio.run(main())[:, 0].tolist() == list(range(30))


def test_a_failing_piece_fails_its_request_only_and_its_other_pieces_never_run():
    calls: list[list[int]] = []

    def encode(rows: TokenRows) -> np.ndarray:
        second_ids = rows.ids[rows.starts + 1].tolist()
        calls.append(second_ids)
        if 1005 in second_ids:
            raise ValueError("text 1005 cannot be encoded")
        return np.array(second_ids, np.float32)[:, None]

    async def main() -> list:
        batcher = Batcher(encode, max_batch_tokens=50, max_wait_s=0, max_queue_requests=10)
        try:
            failing = batcher.submit(texts(1000, 40))  # its second piece fails
            return await asyncio.gather(failing, return_exceptions=True)
        finally:
            batcher.close()

    (result,) = asyncio.run(main())
    assert isinstance(result, ValueError)
    assert len(calls) == 2  # the first piece, the failing one; the other 6 were dropped


def test_two_big_requests_take_turns_and_end_together():
    recorder = Recorder(hold_first=True)

    async def main() -> None:
        batcher = Batcher(recorder, max_batch_tokens=50, max_wait_s=0, max_queue_requests=10)
        try:
            await _submit_while_held(batcher, recorder, texts(1000, 20), [texts(5000, 20)])
        finally:
            batcher.close()

    asyncio.run(main())
    last_call = {owner: i for i, call in enumerate(recorder.calls) for owner in {n // 1000 for n in call}}
    assert len(recorder.calls) == 8, recorder.calls  # 40 texts, 5 a batch: every batch full
    assert abs(last_call[1] - last_call[5]) <= 1, recorder.calls  # first come, first served: calls 3 and 7


def test_a_big_request_progresses_under_a_stream_of_small_ones():
    """Small requests that alone would fill every batch still leave room for one big text."""
    recorder = Recorder(hold_first=True)

    async def main() -> None:
        batcher = Batcher(recorder, max_batch_tokens=50, max_wait_s=0, max_queue_requests=100)
        try:
            await _submit_while_held(batcher, recorder, texts(1000, 10), [texts(2000 + i, 1) for i in range(20)])
        finally:
            batcher.close()

    asyncio.run(main())
    calls = recorder.calls
    assert calls[0] == list(range(1000, 1005))  # held
    for call in calls[1:5]:  # 20 small ones, 4 a batch, with one big text each
        assert len(call) == 5 and sum(1000 <= i < 2000 for i in call) == 1, calls


def test_a_worker_stays_free_for_new_requests_while_a_big_one_runs():
    """Two workers: the pieces of a started request take only one, so a one-sentence request that
    arrives runs at once on the other, while the big request's piece is still on the encoder."""
    holding, release = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def encode(rows: TokenRows) -> np.ndarray:
        second_ids = rows.ids[rows.starts + 1]
        calls.append(second_ids.tolist())
        if second_ids[0] < 2000 and len(calls) > 1:  # the big request's pieces after its first: held
            holding.set()
            assert release.wait(30)
        return second_ids[:, None].astype(np.float32)

    async def main() -> tuple[np.ndarray, np.ndarray]:
        batcher = Batcher(encode, max_batch_tokens=50, max_wait_s=0, max_queue_requests=10, workers=2)
        try:
            big = batcher.submit(texts(1000, 40))  # 8 pieces of 5 texts
            await asyncio.to_thread(holding.wait, 30)
            small = await asyncio.wait_for(batcher.submit(texts(2000, 1)), 10)  # while a piece is held
            release.set()
            return small, await big
        finally:
            release.set()
            batcher.close()

    small, big = asyncio.run(main())
    assert small[:, 0].tolist() == [2000]
    assert big[:, 0].tolist() == list(range(1000, 1040))
    assert calls[2][0] == 2000  # the third call, beside the held piece, with one text of the big request


class Gate:
    """An encoder whose calls each wait until the test ends them (`end`), or until `open()`."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.started = threading.Semaphore(0)
        self._ends: list[threading.Event] = []
        self._lock = threading.Lock()
        self._open = False

    def __call__(self, rows: TokenRows) -> np.ndarray:
        end = threading.Event()
        with self._lock:
            self.calls.append(rows.ids[rows.starts + 1].tolist())
            self._ends.append(end)
            if self._open:
                end.set()
        self.started.release()
        assert end.wait(30)
        return rows.ids[rows.starts + 1][:, None].astype(np.float32)

    def end(self, call: int) -> None:
        self._ends[call].set()

    def open(self) -> None:
        """End every call, and let those to come run through."""
        with self._lock:
            self._open = True
            for end in self._ends:
                end.set()


async def _started(gate: Gate, calls: int = 1, within_s: float = 30) -> None:
    for _ in range(calls):
        assert await asyncio.to_thread(gate.started.acquire, True, within_s), "no call started"


def _calls_with_hold(workers: int, scenario: Callable[[Batcher, Gate], Awaitable[None]]) -> list[list[int]]:
    """The calls a held batcher (hold_s 5 s) made on a Gate while `scenario` ran."""
    gate = Gate()

    async def main() -> None:
        batcher = Batcher(gate, max_batch_tokens=1000, max_wait_s=0, max_queue_requests=10, workers=workers, hold_s=5.0)
        try:
            await scenario(batcher, gate)
        finally:
            gate.open()
            batcher.close()

    asyncio.run(main())
    return gate.calls


async def _two_running_one_gathering(batcher: Batcher, gate: Gate) -> tuple[asyncio.Future, ...]:
    """Requests 1 and 2 each on the encoder in a call of its own, request 3 queued behind them."""
    first = batcher.submit(texts(1, 1))
    await _started(gate)
    second = batcher.submit(texts(2, 1))
    await _started(gate)
    return first, second, batcher.submit(texts(3, 1))


def test_a_freed_worker_waits_for_its_clients_while_another_call_runs():
    """Calls 1 and 2 run; request 3 gathers. Call 1 ends: its worker waits (hold_s) for as many
    tokens as call 1 held, so request 4, sent after call 1's answer, shares a call with request 3."""

    async def scenario(batcher: Batcher, gate: Gate) -> None:
        first, second, third = await _two_running_one_gathering(batcher, gate)
        gate.end(0)
        await first
        await asyncio.sleep(0.2)  # a client's round trip
        fourth = batcher.submit(texts(4, 1))
        await _started(gate)
        gate.open()
        await asyncio.gather(second, third, fourth)

    assert _calls_with_hold(3, scenario) == [[1], [2], [3, 4]]


def test_a_freed_worker_does_not_wait_when_no_other_call_runs():
    """One call at a time (two workers, the second kept for new requests under a big one): nothing
    else feeds the encoder, so the freed worker takes request 3 at once, without request 4."""

    async def scenario(batcher: Batcher, gate: Gate) -> None:
        first = batcher.submit(texts(1, 1))
        await _started(gate)
        third = batcher.submit(texts(3, 1))
        gate.end(0)
        await first
        await _started(gate, within_s=1)  # request 3's call, well within hold_s
        fourth = batcher.submit(texts(4, 1))
        gate.open()
        await asyncio.gather(third, fourth)

    assert _calls_with_hold(2, scenario) == [[1], [3], [4]]


def test_a_held_call_starts_once_no_other_call_feeds_the_encoder():
    """Call 1 ends while call 2 runs, so the next call is held for call 1's clients; when call 2
    ends too, nothing would keep the encoder busy: request 3 runs at once, without waiting."""

    async def scenario(batcher: Batcher, gate: Gate) -> None:
        first, second, third = await _two_running_one_gathering(batcher, gate)
        gate.end(0)
        await first
        gate.end(1)
        await second
        await _started(gate, within_s=1)
        fourth = batcher.submit(texts(4, 1))
        gate.open()
        await asyncio.gather(third, fourth)

    assert _calls_with_hold(3, scenario) == [[1], [2], [3], [4]]
