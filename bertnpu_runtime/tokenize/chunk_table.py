"""A cache of word-piece ids per space-free chunk, read for many chunks at once with NumPy.

Chunks are numbered as they are first seen, and their ids are stored back to back in one array, so
the ids of a list of chunks are one `np.fromiter` over a dict lookup (a C loop) and a few gathers,
with no Python code per chunk once the chunks are known.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from .token_rows import segment_positions

# The table grows with the vocabulary of the text seen. Past this many chunks, new ones are not kept;
# chunks longer than this many characters (URLs, runs of symbols) never are. That bounds its memory.
MAX_KEPT_CHUNKS = 500_000
MAX_KEPT_CHUNK_CHARS = 48


class _Numbers(dict):
    """chunk -> its number in the table; a missing chunk is added by `add`."""

    def __init__(self, add: Callable[[str], int]) -> None:
        super().__init__()
        self._add = add

    def __missing__(self, chunk: str) -> int:
        return self._add(chunk)


class ChunkTable:
    """Word-piece ids of chunks, from `ids_of_chunk` the first time a chunk is seen."""

    def __init__(self, ids_of_chunk: Callable[[str], list[int]]) -> None:
        self._ids_of_chunk = ids_of_chunk
        self._numbers = _Numbers(self._add)
        self._first = np.empty(1024, dtype=np.int64)  # per chunk number: where its ids begin in _ids
        self._count = np.empty(1024, dtype=np.int64)  # per chunk number: how many ids it has
        self._ids = np.empty(4096, dtype=np.int64)
        self._chunks = 0  # numbers in use
        self._used = 0  # entries of _ids in use
        # Chunks not kept (too long, or the table is full) are numbered for one call only. From the
        # first of them on, the table is rebuilt after the call, keeping just the kept chunks.
        self._unkept_from: tuple[int, int] | None = None  # (_chunks, _used) before the first unkept chunk
        self._kept_since: list[tuple[str, list[int]]] = []  # chunks kept after it, with their ids
        self._lock = threading.Lock()  # one call at a time: a call adds chunks and may drop some after

    def set_ids(self, chunk: str, ids: list[int]) -> None:
        """Fix the ids of `chunk` (for a marker chunk that the tokenizer itself would not produce)."""
        with self._lock:
            self._numbers[chunk] = self._append(ids)

    def ids(self, chunks: list[str]) -> np.ndarray:
        """int64 [total]: the ids of every chunk, back to back."""
        with self._lock:
            try:
                numbers = np.fromiter(map(self._numbers.__getitem__, chunks), dtype=np.int64, count=len(chunks))
                return self._ids[segment_positions(self._first[numbers], self._count[numbers])]
            finally:
                self._drop_unkept()

    def __len__(self) -> int:
        return len(self._numbers)

    def _add(self, chunk: str) -> int:
        ids = self._ids_of_chunk(chunk)
        number = self._append(ids)
        if len(chunk) <= MAX_KEPT_CHUNK_CHARS and len(self._numbers) < MAX_KEPT_CHUNKS:
            self._numbers[chunk] = number
            if self._unkept_from is not None:
                self._kept_since.append((chunk, ids))
        elif self._unkept_from is None:
            self._unkept_from = (number, self._used - len(ids))
        return number

    def _append(self, ids: list[int]) -> int:
        number = self._chunks
        self._first = _with_room(self._first, number + 1)
        self._count = _with_room(self._count, number + 1)
        self._ids = _with_room(self._ids, self._used + len(ids))
        self._first[number], self._count[number] = self._used, len(ids)
        self._ids[self._used : self._used + len(ids)] = ids
        self._chunks, self._used = number + 1, self._used + len(ids)
        return number

    def _drop_unkept(self) -> None:
        """Free what the unkept chunks of the last call took; kept chunks after them move down."""
        if self._unkept_from is None:
            return
        self._chunks, self._used = self._unkept_from
        for chunk, ids in self._kept_since:
            self._numbers[chunk] = self._append(ids)
        self._unkept_from, self._kept_since = None, []


def _with_room(array: np.ndarray, size: int) -> np.ndarray:
    """`array`, or a copy twice as large when it holds fewer than `size` entries."""
    if size <= len(array):
        return array
    grown = np.empty(max(size, 2 * len(array)), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
