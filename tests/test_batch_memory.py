"""BatchMemory: arrays out never overlap, memory given back is used again, and the order is enforced."""

from __future__ import annotations

import numpy as np
import pytest

from bertnpu_runtime.batch_memory import BatchMemory


def _check_intact(out: list[tuple[np.ndarray, float]]) -> None:
    for array, value in out:
        assert np.all(array == value), "an array still out was overwritten"


def test_arrays_have_the_shape_asked_and_start_on_a_cache_line():
    memory = BatchMemory()
    shapes = [(3, 5, 384), (1, 2, 384), (0, 7, 384), (32, 16, 384)]
    arrays = [memory.take(shape) for shape in shapes]
    for array, shape in zip(arrays, shapes):
        assert array.shape == shape and array.dtype == np.float32 and array.flags.c_contiguous
        assert array.ctypes.data % 64 == 0
    for array in arrays:
        memory.give_back(array)


def test_memory_given_back_is_used_again_without_growing():
    memory = BatchMemory()

    def one_round() -> list[int]:
        arrays = [memory.take((8, 16, 384)) for _ in range(4)]
        for array in arrays:
            memory.give_back(array)
        return [array.ctypes.data for array in arrays]

    one_round()  # the ring grows to hold four
    ring_bytes = memory.nbytes
    assert one_round() == one_round()  # the same memory, round after round
    assert memory.nbytes == ring_bytes


def test_arrays_out_keep_their_values_while_the_ring_wraps_and_grows():
    rng = np.random.default_rng(0)
    memory = BatchMemory()
    out: list[tuple[np.ndarray, float]] = []
    sizes_after_warmup = set()
    for step in range(3000):
        if out and (len(out) > 12 or rng.random() < 0.5):
            array, value = out.pop(0)
            assert np.all(array == value)
            memory.give_back(array)
        else:
            array = memory.take((int(rng.integers(1, 33)), int(rng.integers(2, 40)), 8))
            array.fill(step)
            out.append((array, float(step)))
        _check_intact(out)
        if step >= 1500:
            sizes_after_warmup.add(memory.nbytes)
    # At most 13 arrays of at most 32 x 39 x 8 floats are out at once: the ring stops growing.
    assert len(sizes_after_warmup) == 1
    assert memory.nbytes <= 4 * 13 * 32 * 40 * 8 * 4


def test_growing_keeps_arrays_of_the_outgrown_ring_valid():
    memory = BatchMemory()
    small = memory.take((2, 4))
    small.fill(1.0)
    large = memory.take((1000, 384))  # does not fit: a new ring
    large.fill(2.0)
    assert not np.shares_memory(small, large)
    assert np.all(small == 1.0)
    memory.give_back(small)
    memory.give_back(large)
    assert np.shares_memory(memory.take((10, 384)), large)  # the new ring is the one reused


def test_arrays_must_come_back_in_the_order_taken():
    memory = BatchMemory()
    first, second = memory.take((2, 3)), memory.take((2, 3))
    with pytest.raises(ValueError, match="in the order they were taken"):
        memory.give_back(second)
    with pytest.raises(ValueError, match="in the order they were taken"):
        memory.give_back(np.empty((2, 3), np.float32))
    memory.give_back(first)
    memory.give_back(second)
    with pytest.raises(ValueError, match="in the order they were taken"):
        memory.give_back(second)
