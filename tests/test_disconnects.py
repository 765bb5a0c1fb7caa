"""DisconnectWatch: a request's connection is watched once it has waited `after_s`, by one timer for all."""

from __future__ import annotations

import asyncio
import time

import pytest

from bertnpu_runtime.serve.disconnects import ClientLeft, DisconnectWatch


class FakeConnection:
    """A request whose body is read: receive() says when it is first called, then waits for the
    client to leave."""

    def __init__(self) -> None:
        self.watched_at: float | None = None
        self.gone = asyncio.Event()

    async def receive(self) -> dict:
        if self.watched_at is None:
            self.watched_at = time.monotonic()
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_a_quick_request_is_never_watched_and_a_slow_one_from_after_s_on():
    async def scenario() -> None:
        watch = DisconnectWatch(after_s=0.1)
        loop = asyncio.get_running_loop()
        quick, slow, later = FakeConnection(), FakeConnection(), FakeConnection()
        quick_future, slow_future, later_future = loop.create_future(), loop.create_future(), loop.create_future()
        started = time.monotonic()
        quick_task = asyncio.create_task(watch.result(quick_future, quick))
        slow_task = asyncio.create_task(watch.result(slow_future, slow))
        await asyncio.sleep(0.05)
        later_task = asyncio.create_task(watch.result(later_future, later))  # due 50 ms after the others
        quick_future.set_result("vectors")
        assert await quick_task == "vectors"
        await asyncio.sleep(0.08)  # the first two are due; the later one is not
        assert quick.watched_at is None  # answered before it was due: no watch
        assert slow.watched_at is not None and slow.watched_at - started >= 0.1
        assert later.watched_at is None
        await asyncio.sleep(0.06)
        assert later.watched_at is not None and later.watched_at - started >= 0.15
        slow.gone.set()  # its client leaves: the future is cancelled, the caller told so
        with pytest.raises(ClientLeft):
            await slow_task
        assert slow_future.cancelled()
        later_future.set_result("later vectors")  # answered while watched: the watch ends
        assert await later_task == "later vectors"
        await asyncio.sleep(0)
        assert not watch._watches  # every watch was ended with its request

    asyncio.run(scenario())


def test_a_cancelled_wait_that_the_watch_did_not_cause_is_a_cancellation():
    async def scenario() -> None:
        watch = DisconnectWatch(after_s=10.0)
        future = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(watch.result(future, FakeConnection()))
        await asyncio.sleep(0)
        task.cancel()  # the server shuts the request down: not a client that left
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
