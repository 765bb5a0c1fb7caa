"""The one seam between the host pipeline and an encoder backend."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class PendingOutput(Protocol):
    """A batch handed to a backend with `submit`; `result()` blocks until its output is ready."""

    def done(self) -> bool: ...

    def result(self) -> np.ndarray: ...


class EncoderBackend(Protocol):
    """Runs the BERT encoder (everything after the embedding LayerNorm).

    `run` takes one padded batch and returns the last hidden states of the same shape; `submit`
    does the same without waiting, so the host can prepare the next batches meanwhile (the arrays
    handed to `submit` may be read until its result is ready: do not change them before).
    hidden: float32 [batch, seq, hidden], C-contiguous; attention_mask: int64 [batch, seq], 1 = real token.
    Rows of padding (mask 0) may hold anything in the output; pooling ignores them.
    Implementations must be safe to call from several threads at once.
    """

    name: str
    # How much submitted work, in (padded) tokens, to keep queued beyond the batch SentenceEncoder
    # waits for: 1 (one batch) for a backend that already uses every CPU core per batch (ONNX);
    # enough for an NPU to stay busy while the host tokenizes the next chunk of texts.
    queued_tokens: int

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def submit(self, hidden: np.ndarray, attention_mask: np.ndarray) -> PendingOutput: ...

    def batch_bucket(self, length: int) -> int | None:
        """Sentences whose lengths give different buckets should not share a batch (the NPU runs
        each width as its own call); None: any lengths may share one (ONNX pads them)."""
        ...

    def close(self) -> None: ...
