"""The server's batcher under mixed load (#35): a big request runs as token-budget pieces that take
turns with other clients' requests, the queue is bounded in tokens, and a failing piece fails only
its own request. The encoder here returns each text's second token id, so order is checkable."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from bertnpu_runtime.serve.batcher import Batcher, QueueFull, split_by_tokens
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
def test_pieces_cover_every_text_once_in_order_within_the_budget(lengths):
    rows = TokenRows.from_lists([[1] * n for n in lengths], [False] * len(lengths))
    pieces = split_by_tokens(rows, 32)
    assert [n for piece in pieces for n in piece.lengths.tolist()] == lengths
    for piece in pieces:
        assert piece.lengths.sum() <= 32 or len(piece) == 1


async def _submit_while_held(batcher: Batcher, recorder: Recorder, first: TokenRows, then: list[TokenRows]) -> list:
    """Submit `first`, wait until the encoder holds its first batch, submit `then`, release."""
    futures = [batcher.submit(first)]
    await asyncio.to_thread(recorder.holding.wait, 30)
    futures += [batcher.submit(rows) for rows in then]
    recorder.release.set()
    return await asyncio.gather(*futures)


def test_a_small_request_waits_one_batch_behind_a_big_one_not_all_of_it():
    recorder = Recorder(hold_first=True)

    async def main() -> list:
        batcher = Batcher(recorder, max_batch_tokens=50, max_wait_s=0, max_queue_requests=10)
        try:
            big = texts(1000, 40)  # 400 tokens: 8 pieces of 5 texts
            return await _submit_while_held(batcher, recorder, big, [texts(1100, 5), texts(2000, 1)])
        finally:
            batcher.close()

    big, second_big, small = asyncio.run(main())
    assert big[:, 0].tolist() == list(range(1000, 1040))  # whole and in order, from 8 pieces
    assert second_big[:, 0].tolist() == list(range(1100, 1105))
    assert small[:, 0].tolist() == [2000]
    calls = recorder.calls
    assert all(len(call) <= 5 for call in calls)  # 50 tokens a batch
    call_of = {second_id: i for i, call in enumerate(calls) for second_id in call}
    # one turn per client ahead of it: the big request's next piece, the other request; then the
    # small one, before the big request's other 6 pieces
    assert call_of[2000] == 3, calls
    assert call_of[1010] > call_of[2000] and call_of[1100] < call_of[2000]


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
