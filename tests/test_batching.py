"""The batch planner, pure: lengths in, row indices out; no model needed."""

import itertools

import numpy as np
import pytest

from bertnpu_runtime.batching import BATCHES_PER_CHUNK, batch_bounds, chunk_bounds, plan_chunk


@pytest.mark.parametrize("count, batch_size", [(0, 4), (1, 4), (5, 4), (300, 8), (5000, 32)])
def test_chunks_cover_every_text_once_growing_from_one_batch(count, batch_size):
    chunks = list(chunk_bounds(count, batch_size))
    assert [i for first, last in chunks for i in range(first, last)] == list(range(count))
    sizes = [last - first for first, last in chunks]
    if sizes:
        assert sizes[0] == min(batch_size, count)
        assert max(sizes) <= batch_size * BATCHES_PER_CHUNK
        assert all(b <= 2 * a for a, b in itertools.pairwise(sizes))


@pytest.mark.parametrize("bucket", [lambda n: None, lambda n: n, lambda n: -(-n // 4) * 4], ids=["none", "exact", "by4"])
def test_batches_hold_one_bucket_and_at_most_batch_size(bucket):
    lengths = np.sort(np.random.default_rng(0).integers(1, 30, size=200))[::-1]
    bounds = list(batch_bounds(lengths, 8, bucket))
    assert [i for start, stop in bounds for i in range(start, stop)] == list(range(200))
    for start, stop in bounds:
        assert 1 <= stop - start <= 8
        assert len({bucket(int(n)) for n in lengths[start:stop]}) == 1
    if bucket(1) is None:
        assert len(bounds) == 25  # no bucket: plain batches of 8


def test_a_short_batch_of_the_chunks_own_rows_waits_for_the_next_chunk():
    lengths = np.array([5, 5, 5, 3, 3, 9])  # exact buckets: 5 x3, 3 x2, 9 x1 at batch 3
    plan = plan_chunk(lengths, 3, lambda n: n, carried=0, final=False)
    assert [sorted(rows.tolist()) for rows in plan.batches] == [[0, 1, 2]]
    assert sorted(plan.held.tolist()) == [3, 4, 5]


def test_carried_rows_are_never_held_twice():
    lengths = np.array([3, 9, 3])  # row 0 was carried from the last chunk
    plan = plan_chunk(lengths, 3, lambda n: n, carried=1, final=False)
    assert [rows.tolist() for rows in plan.batches] == [[0, 2]]  # holds a carried row: goes now
    assert plan.held.tolist() == [1]


def test_the_last_chunk_holds_nothing_and_sends_its_largest_batches_first():
    lengths = np.array([9, 3, 3, 3, 5, 5])
    plan = plan_chunk(lengths, 3, lambda n: n, carried=0, final=True)
    assert [len(rows) for rows in plan.batches] == [3, 2, 1] and len(plan.held) == 0
    assert sorted(np.concatenate(plan.batches).tolist()) == list(range(6))


def test_without_buckets_batches_run_longest_first():
    lengths = np.array([1, 4, 2, 3])
    plan = plan_chunk(lengths, 2, lambda n: None, carried=0, final=True)
    assert [lengths[rows].tolist() for rows in plan.batches] == [[4, 3], [2, 1]]
