"""`bertnpu serve -v`: at most one progress line per interval, however many batches run.

The line is written when a request ends and the interval has passed (no timer thread to stop);
a server with no traffic writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger("bertnpu.serve.progress")  # INFO with -v only

PROGRESS_INTERVAL_S = 10.0


class ProgressLine:
    """Counts served requests, texts and tokens, and logs them (INFO) once per `interval_s`."""

    def __init__(self, interval_s: float = PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._since = clock()
        self._requests = self._texts = self._tokens = 0

    def served(self, texts: int, tokens: int, queued_requests: int) -> None:
        """One request was answered; log the interval's totals when it has passed."""
        self._requests += 1
        self._texts += texts
        self._tokens += tokens
        now = self._clock()
        elapsed = now - self._since
        if elapsed < self.interval_s:
            return
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "served %d requests, %d texts, %d tokens in the last %.0f s (%.0f texts/s); %d requests queued",
                self._requests,
                self._texts,
                self._tokens,
                elapsed,
                self._texts / elapsed,
                queued_requests,
            )
        self._since = now
        self._requests = self._texts = self._tokens = 0
