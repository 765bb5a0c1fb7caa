"""Batch planning, pure: token lengths in, batches of row indices out. No model, no arrays of ids.

encode() tokenizes its texts a chunk at a time (`chunk_bounds`), so the encoder starts on the first
batches while later ones are tokenized and memory stays bounded. Each chunk is planned by
`plan_chunk`: sorted longest first, so a batch holds sentences of similar length and carries
little padding, and cut where the backend's bucket changes (the NPU runs one length per call).

A batch short of batch_size made only of the chunk's own texts is held back for the next chunk,
where texts of the same length may fill it: fewer, fuller encoder calls, and on the NPU each call
costs the host a thread wake-up. It goes with the next chunk whatever its size, so no text waits
longer than one chunk. The last chunk yields its largest batches first, so that the encoder's last
calls are small and NPU cores finish close together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

# Texts are tokenized at most this many batches at a time (see chunk_bounds).
BATCHES_PER_CHUNK = 32

Bucket = Callable[[int], "int | None"]  # a sentence length -> its bucket; None: any lengths mix


class ChunkPlan(NamedTuple):
    """What to do with one chunk's rows (the rows carried from the last chunk first, then its own)."""

    batches: list[np.ndarray]  # row indices of each batch, in the order to submit them
    held: np.ndarray  # row indices to carry into the next chunk


def chunk_bounds(count: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(first, last) text index of each tokenization chunk. The first is one batch, so the encoder
    starts soon; each next one is twice as large, up to BATCHES_PER_CHUNK batches (large chunks
    give batches of equal lengths that fill up), so the encoder always has the previous chunk's
    batches to work on while the host tokenizes the next."""
    first, size = 0, batch_size
    while first < count:
        yield first, min(first + size, count)
        first += size
        size = min(2 * size, batch_size * BATCHES_PER_CHUNK)


def plan_chunk(lengths: np.ndarray, batch_size: int, bucket: Bucket, *, carried: int, final: bool) -> ChunkPlan:
    """Batches of a chunk's rows, given their token `lengths`; the first `carried` rows were held
    back by the previous chunk and are never held again. `final`: the last chunk, which holds nothing."""
    order = np.argsort(-lengths, kind="stable")
    bounds = list(batch_bounds(lengths[order], batch_size, bucket))
    if final:
        bounds.sort(key=lambda bound: bound[0] - bound[1])  # stable: equal sizes stay longest first
    batches, held = [], []
    for start, stop in bounds:
        rows = order[start:stop]
        if not final and stop - start < batch_size and rows.min() >= carried:
            held.append(rows)
        else:
            batches.append(rows)
    return ChunkPlan(batches, np.concatenate(held) if held else np.empty(0, dtype=np.intp))


def batch_bounds(lengths_longest_first: np.ndarray, batch_size: int, bucket: Bucket) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch over sentences sorted longest first: at most batch_size sentences,
    and only sentences of one bucket together."""
    buckets = {length: bucket(length) for length in np.unique(lengths_longest_first).tolist()}
    keys = [buckets[length] for length in lengths_longest_first.tolist()]
    run_starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    for run_start, run_stop in zip(run_starts, run_starts[1:] + [len(keys)]):
        for start in range(run_start, run_stop, batch_size):
            yield start, min(start + batch_size, run_stop)
