"""The one seam between the host pipeline and an encoder backend."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class EncoderBackend(Protocol):
    """Runs the BERT encoder (everything after the embedding LayerNorm).

    `run` takes one padded batch and returns the last hidden states of the same shape.
    hidden: float32 [batch, seq, hidden], C-contiguous; attention_mask: int64 [batch, seq], 1 = real token.
    Rows of padding (mask 0) may hold anything in the output; pooling ignores them.
    Implementations must be safe to call from several threads at once.
    """

    name: str
    # How many batches the backend can usefully work on at once: 1 for a backend that already
    # uses every CPU core per batch (ONNX), more for one that spreads sentences over NPU cores.
    pipeline_depth: int

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
