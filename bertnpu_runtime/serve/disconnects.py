"""Requests whose clients went away: their queued texts are dropped before they reach the encoder.

Watching a connection costs a task, more than a quick request could save (most are answered in
tens of milliseconds); the abandoned requests worth dropping wait seconds. So a request's
connection is watched only once it has waited WATCH_AFTER_S, and one timer finds those requests
for all of them: a timer per request cost 64 one-sentence clients about a tenth of the event
loop's time per request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from starlette.requests import Request

# A request still unanswered after this long has its connection watched.
WATCH_AFTER_S = 0.25


class ClientLeft(Exception):
    """The client closed its connection before its answer was ready."""


class DisconnectWatch:
    """Awaits requests' futures, cancelling one whose client disconnects while it waits."""

    def __init__(self, after_s: float = WATCH_AFTER_S) -> None:
        self.after_s = after_s
        self._unwatched: deque[_Waiting] = deque()  # by when each is due
        self._watches: dict[asyncio.Future, asyncio.Task] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def result(self, future: asyncio.Future, request: Request) -> Any:
        """The future's result; ClientLeft when `request`'s client disconnected first (the future
        is then cancelled: a batcher drops its queued texts)."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(loop.time() + self.after_s, future, request)
        self._unwatched.append(waiting)
        if self._timer is None:
            self._timer = loop.call_later(self.after_s, self._watch_due, loop)
        try:
            return await future
        except asyncio.CancelledError:
            watch = self._watches.get(future)
            if watch is not None and watch.done() and not watch.cancelled():  # it cancelled the future
                raise ClientLeft from None
            raise
        finally:
            # The queue keeps its entry until the next due time; kept alive that long, the request's
            # objects would go through the garbage collector's generations (10-25 us a request).
            waiting.future = waiting.request = None
            watch = self._watches.pop(future, None)
            if watch is not None:
                watch.cancel()

    def _watch_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the connections of the requests that have waited after_s and still wait; then
        sleep until the next one is due, but at least after_s / 2 (one wake-up per request would
        cost what one timer per request did): a request is watched after_s to 1.5 after_s in."""
        self._timer = None
        now = loop.time()
        while self._unwatched and self._unwatched[0].due <= now:
            waiting = self._unwatched.popleft()
            if waiting.future is not None and waiting.request is not None:  # still awaited in result()
                self._watches[waiting.future] = loop.create_task(_cancel_when_gone(waiting.request, waiting.future))
        if self._unwatched:
            self._timer = loop.call_at(max(self._unwatched[0].due, now + self.after_s / 2), self._watch_due, loop)


class _Waiting:
    """A request in result(); its future and request are cleared when it ends."""

    __slots__ = ("due", "future", "request")

    def __init__(self, due: float, future: asyncio.Future, request: Request) -> None:
        self.due = due
        self.future: asyncio.Future | None = future
        self.request: Request | None = request


async def _cancel_when_gone(request: Request, future: asyncio.Future) -> None:
    """Cancel `future` when the client disconnects (the body is read: what is left to receive is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    future.cancel()
