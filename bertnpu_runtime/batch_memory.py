"""Memory for the hidden states of encode()'s batches, used again batch after batch.

A fresh array for every embedded batch can cost the host a page fault per 4 KB the first time it
is written, thousands per few thousand sentences. encode() is done with its batches
in the order it made them (it collects the encoder's outputs in submission order), so one ring of
memory serves them all: a batch takes the space after the newest one, and the oldest one's space
comes free.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import numpy as np

_ALIGN = 16  # floats: every array starts on a 64-byte cache line, and takes at least one


class _Taken(NamedTuple):
    array: np.ndarray
    ring: np.ndarray  # the ring it lies in: a ring outgrown meanwhile lives on until its arrays are back
    start: int
    stop: int


class BatchMemory:
    """float32 arrays taken and given back first in, first out, from one ring that grows with the
    most ever taken at once and is then reused. Not thread-safe: one encode() at a time."""

    def __init__(self) -> None:
        self._ring = _aligned_empty(0)
        self._head = 0  # where the ring's next array starts
        self._taken: deque[_Taken] = deque()  # oldest first

    @property
    def nbytes(self) -> int:
        """Bytes of the current ring (arrays of an outgrown ring still out are not counted)."""
        return self._ring.nbytes

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialized C-contiguous float32 array of `shape`, which is this caller's until it
        is given back."""
        size = math.prod(shape)
        start = self._free_start(size)
        if start is None:  # no room: a larger ring; arrays still out keep the old one alive
            # Room for what is out, this array and two more of its size: with that much free, one
            # piece of it, before or after the arrays out, holds an array of this size again.
            out = sum(taken.stop - taken.start for taken in self._taken)
            grown = max(len(self._ring) * 3 // 2, out + 3 * _aligned(size))
            self._ring = _aligned_empty(grown)
            start = 0
        array = self._ring[start : start + size].reshape(shape)
        self._taken.append(_Taken(array, self._ring, start, start + _aligned(size)))
        self._head = start + _aligned(size)
        return array

    def give_back(self, array: np.ndarray) -> None:
        """Return the oldest array taken and not yet given back; its memory may be handed out again."""
        if not self._taken or self._taken[0].array is not array:
            raise ValueError("BatchMemory arrays must be given back in the order they were taken")
        self._taken.popleft()

    def _free_start(self, size: int) -> int | None:
        """Where an array of `size` floats fits in the current ring, or None."""
        oldest = next((t for t in self._taken if t.ring is self._ring), None)
        if oldest is None:  # the ring is empty: start over at its beginning
            return 0 if size <= len(self._ring) else None
        tail = oldest.start
        if self._head > tail:  # free: [head, end) and [0, tail)
            if self._head + size <= len(self._ring):
                return self._head
            return 0 if size <= tail else None
        return self._head if self._head + size <= tail else None  # free: [head, tail)


def _aligned(size: int) -> int:
    return max(1, -(-size // _ALIGN)) * _ALIGN


def _aligned_empty(size: int) -> np.ndarray:
    """An uninitialized float32 [size] that starts on a multiple of _ALIGN floats in memory."""
    raw = np.empty(size + _ALIGN, np.float32)
    skip = (-raw.ctypes.data % (4 * _ALIGN)) // 4
    return raw[skip : skip + size]
