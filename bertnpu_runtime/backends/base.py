"""The one seam between the host pipeline and an encoder backend."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

# The batch_size encode() uses when none is given, for a backend that names none: sentence-transformers' default.
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class BackendHints:
    """What the pipeline needs to know to feed a backend well.

    queued_tokens: how much submitted work, in (padded) tokens, to keep queued beyond the batch the
        pipeline waits for: 1 (one batch) for a backend that already uses every CPU core per batch
        (ONNX); enough for an NPU to stay busy while the host tokenizes the next chunk of texts.
    preferred_batch_size: encode()'s batch_size when none is given.
    bucket: sentence length -> bucket; sentences of different buckets should not share a batch
        (the NPU runs each width as its own call). None: any lengths may share one (ONNX pads them).
    call_cost_tokens: where any lengths share a batch, what one more call costs the backend, in
        padded tokens' worth of work: batches are cut where the padding saved is worth more.
        None: cut every batch_size sentences.
    batch_tokens: where any lengths share a batch, the most padded tokens in one (None: no limit
        beyond batch_size).
    concurrent_calls: how many encode() calls at once keep this backend busiest: a caller with
        many independent requests (the server) runs that many, so that one call's host stages
        (tokenize, embed, pool) overlap the other's encoder work.
    """

    queued_tokens: int = 1
    preferred_batch_size: int = DEFAULT_BATCH_SIZE
    bucket: Callable[[int], int | None] | None = None
    call_cost_tokens: float | None = None
    batch_tokens: int | None = None
    concurrent_calls: int = 1


class PendingOutput(Protocol):
    """A batch handed to a backend with `submit`; `result()` blocks until its output is ready."""

    def done(self) -> bool: ...

    def result(self) -> np.ndarray: ...

    def cancel(self) -> bool:
        """Withdraw the work of this batch that has not started (an interrupted encode() calls it);
        work already on the encoder finishes. True when none of it will run."""
        ...


@runtime_checkable
class EncoderBackend(Protocol):
    """Runs the BERT encoder (everything after the embedding LayerNorm).

    `run` takes one padded batch and returns the last hidden states of the same shape; `submit`
    does the same without waiting, so the host can prepare the next batches meanwhile (the arrays
    handed to `submit` may be read until its result is ready: do not change them before).
    hidden: float32 [batch, seq, hidden], C-contiguous; attention_mask: int64 [batch, seq], 1 = real token.
    Rows of padding (mask 0) may hold anything in the output; pooling ignores them.
    Implementations must be safe to call from several threads at once. `close()` may come from
    another thread while batches are queued: it fails the ones not started with
    EncoderClosedError, gives the running ones a bounded time, releases what the backend holds and
    returns; `submit` after it raises EncoderClosedError.
    """

    name: str
    hints: BackendHints

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def submit(
        self, hidden: np.ndarray, attention_mask: np.ndarray, alone: bool = False, call_tokens: int | None = None
    ) -> PendingOutput:
        """`alone`: the batch is its encode() call's only one (no other joins the backend before
        it is done); a backend may run it differently (ONNX: on every thread at once).
        `call_tokens`: the tokens of the whole call the batch belongs to, when its caller knows
        them (None: unknown); a backend shared by several calls may run small calls' batches first
        (ONNX does, for calls of one batch's tokens), so a server's one-sentence request does not
        queue behind a big one."""
        ...

    def health(self) -> str | None:
        """None while the backend can take work; else why not, in one line (a server's /health)."""
        ...

    def stats(self) -> dict[str, float]:
        """Counters and gauges for monitoring, by name (the NPU's cores in service, failed and
        retried calls, timeouts); empty where the backend has none."""
        ...

    def close(self) -> None: ...


def as_encoder_backend(backend: Any) -> EncoderBackend:
    """`backend` itself when it has the whole interface; one with only `run` (and `close`, `name`),
    wrapped so that `submit` runs the batch at once. Anything else is a TypeError."""
    if isinstance(backend, EncoderBackend) and isinstance(backend.hints, BackendHints):
        return backend
    if not callable(getattr(backend, "run", None)):
        raise TypeError(
            f"backend must be 'auto', 'npu', 'onnx' or an encoder backend with run(hidden, attention_mask), "
            f"found {type(backend).__name__}"
        )
    return _RunOnly(backend)


class _RunOnly:
    """An encoder with only `run`: submitted batches run at once, one at a time, in any length mix."""

    hints = BackendHints()

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.name = str(getattr(backend, "name", type(backend).__name__))

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._backend.run(hidden, attention_mask)

    def submit(
        self, hidden: np.ndarray, attention_mask: np.ndarray, alone: bool = False, call_tokens: int | None = None
    ) -> Future:
        done: Future = Future()
        try:
            done.set_result(self.run(hidden, attention_mask))
        except Exception as exc:  # noqa: BLE001 - raised again by result(), like a thread's would be
            done.set_exception(exc)
        return done

    def health(self) -> str | None:
        return None

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        close = getattr(self._backend, "close", None)
        if callable(close):
            close()
