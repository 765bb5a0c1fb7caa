"""Token ids of several texts back to back ("rows"), and putting such sets of rows together."""

from __future__ import annotations

import itertools

import numpy as np

# (ids int64 [total], lengths int64 [texts], truncated bool [texts]): texts' ids back to back
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]


def segment_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64 [lengths.sum()]: the positions of segments (start, length) of a flat array, segment
    after segment: starts[0], starts[0] + 1, .., starts[1], ..; to gather them or scatter into them."""
    ends = np.cumsum(lengths)
    positions = np.repeat(starts - (ends - lengths), lengths)  # each segment's start, less where it lands
    positions += np.arange(len(positions))
    return positions


def interleave(count: int, parts: list[tuple[np.ndarray, Rows]]) -> Rows:
    """The rows of `count` texts, from parts that each hold the rows of the texts at its indices
    (every index in exactly one part), in text order."""
    lengths = np.empty(count, dtype=np.int64)
    truncated = np.empty(count, dtype=bool)
    for indices, (_, part_lengths, part_truncated) in parts:
        lengths[indices], truncated[indices] = part_lengths, part_truncated
    starts = np.cumsum(lengths) - lengths  # where each text's ids begin in the result
    ids = np.empty(int(lengths.sum()), dtype=np.int64)
    for indices, (part_ids, part_lengths, _) in parts:
        ids[segment_positions(starts[indices], part_lengths)] = part_ids
    return ids, lengths, truncated


def concatenate(parts: list[Rows]) -> Rows:
    """The rows of every part, part after part."""
    ids, lengths, truncated = (np.concatenate(arrays) for arrays in zip(*parts))
    return ids, lengths, truncated


def rows_of(ids_per_text: list[list[int]], truncated: list[bool]) -> Rows:
    """Rows from a list of ids per text."""
    lengths = np.array([len(ids) for ids in ids_per_text], dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(ids_per_text), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths, np.array(truncated, dtype=bool)
