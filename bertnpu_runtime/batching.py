"""Batch planning, pure: token lengths in, batches of row indices out. No model, no arrays of ids.

encode() tokenizes its texts a chunk at a time (`chunk_bounds`), so the encoder starts on the first
batches while later ones are tokenized and memory stays bounded. Each chunk is planned by
`plan_chunk`: sorted longest first, so a batch holds sentences of similar length and carries
little padding, and cut where the backend's bucket changes (the NPU runs one length per call).
Where any lengths share a batch (ONNX pads each to its longest), the sorted run is cut where the
padding saved outweighs one more encoder call (`least_padding_bounds`): a server's batch of 32
random sentences would otherwise carry 1.6 times its real tokens. There a batch also holds at most
the backend's `batch_tokens` padded tokens: long texts run no slower in small batches on a CPU,
and a small batch frees its thread sooner for another caller's.

A batch short of batch_size made only of the chunk's own texts is held back for the next chunk,
where texts of the same length may fill it: fewer, fuller encoder calls, and on the NPU each call
costs the host a thread wake-up. It goes with the next chunk whatever its size, so no text waits
longer than one chunk. The last chunk yields its largest batches first, so that the encoder's last
calls are small and NPU cores finish close together.
"""

from __future__ import annotations

import math
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


def plan_chunk(
    lengths: np.ndarray,
    batch_size: int,
    bucket: Bucket,
    *,
    carried: int,
    final: bool,
    call_cost_tokens: float | None = None,
    batch_tokens: int | None = None,
) -> ChunkPlan:
    """Batches of a chunk's rows, given their token `lengths`; the first `carried` rows were held
    back by the previous chunk and are never held again. `final`: the last chunk, which holds nothing.
    A batch is held only while one more text of its length would fit it.
    `call_cost_tokens`, `batch_tokens`: see batch_bounds."""
    order = np.argsort(-lengths, kind="stable")
    bounds = list(batch_bounds(lengths[order], batch_size, bucket, call_cost_tokens, batch_tokens))
    if final:
        bounds.sort(key=lambda bound: bound[0] - bound[1])  # stable: equal sizes stay longest first
    batches, held = [], []
    for start, stop in bounds:
        rows = order[start:stop]
        room = batch_tokens is None or (stop - start + 1) * lengths[rows[0]] <= batch_tokens
        if not final and stop - start < batch_size and room and rows.min() >= carried:
            held.append(rows)
        else:
            batches.append(rows)
    return ChunkPlan(batches, np.concatenate(held) if held else np.empty(0, dtype=np.intp))


def batch_bounds(
    lengths_longest_first: np.ndarray,
    batch_size: int,
    bucket: Bucket,
    call_cost_tokens: float | None = None,
    batch_tokens: int | None = None,
) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch over sentences sorted longest first: at most batch_size sentences,
    and only sentences of one bucket together. Sentences of no bucket (any lengths mix) are cut
    by least_padding_bounds when `call_cost_tokens` is given (at most `batch_tokens` padded tokens
    a batch, when given), else every batch_size sentences."""
    buckets = {length: bucket(length) for length in np.unique(lengths_longest_first).tolist()}
    keys = [buckets[length] for length in lengths_longest_first.tolist()]
    run_starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    for run_start, run_stop in zip(run_starts, run_starts[1:] + [len(keys)]):
        if keys[run_start] is None and call_cost_tokens is not None:
            run = lengths_longest_first[run_start:run_stop]
            for start, stop in least_padding_bounds(run, batch_size, call_cost_tokens, batch_tokens):
                yield run_start + start, run_start + stop
        else:
            for start in range(run_start, run_stop, batch_size):
                yield start, min(start + batch_size, run_stop)


def least_padding_bounds(
    lengths_longest_first: np.ndarray, batch_size: int, call_cost_tokens: float, batch_tokens: int | None = None
) -> list[tuple[int, int]]:
    """(start, stop) of the batches of at most batch_size sentences, each padded to its first
    (longest) and holding at most `batch_tokens` padded tokens (a sentence longer than that alone),
    that cost least in all: padded tokens plus `call_cost_tokens` per batch. Dynamic programming
    over the cut points; ties go to the larger batch. Plain Python: a server's call holds tens of
    sentences, for which NumPy's per-call overhead cost 3x as much (and 3,000 sentences cost no more)."""
    lengths = np.asarray(lengths_longest_first, dtype=np.float64).tolist()
    count = len(lengths)
    most_padded = math.inf if batch_tokens is None else batch_tokens
    least = [0.0] * (count + 1)  # least[stop]: the cost of the first `stop` sentences
    first_of_last = [0] * (count + 1)  # where the last batch of that plan starts
    for stop in range(1, count + 1):
        best_cost, best_start = math.inf, stop - 1
        for start in range(max(0, stop - batch_size), stop):
            padded = (stop - start) * lengths[start]
            if padded > most_padded and start < stop - 1:  # one sentence alone always fits
                continue
            cost = least[start] + call_cost_tokens + padded
            if cost < best_cost:
                best_cost, best_start = cost, start
        least[stop], first_of_last[stop] = best_cost, best_start
    bounds, stop = [], count
    while stop > 0:
        bounds.append((first_of_last[stop], stop))
        stop = bounds[-1][0]
    return bounds[::-1]
