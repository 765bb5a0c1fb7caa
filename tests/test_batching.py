"""The batch planner, pure: lengths in, row indices out; no model needed."""

import itertools

import numpy as np
import pytest

from bertnpu_runtime.batching import BATCHES_PER_CHUNK, batch_bounds, chunk_bounds, least_padding_bounds, plan_chunk


@pytest.mark.parametrize("count, batch_size", [(0, 4), (1, 4), (5, 4), (300, 8), (5000, 32)])
def test_chunks_cover_every_text_once_growing_from_one_batch(count, batch_size):
    chunks = list(chunk_bounds(count, batch_size))
    assert [i for first, last in chunks for i in range(first, last)] == list(range(count))
    sizes = [last - first for first, last in chunks]
    if sizes:
        assert sizes[0] == min(batch_size, count)
        assert max(sizes) <= batch_size * BATCHES_PER_CHUNK
        assert all(b <= 2 * a for a, b in itertools.pairwise(sizes))


@pytest.mark.parametrize(
    "bucket", [lambda n: None, lambda n: n, lambda n: -(-n // 4) * 4], ids=["none", "exact", "by4"]
)
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


def plan_cost(lengths, bounds, call_cost):
    """Padded tokens (each batch padded to its first, longest) plus call_cost per batch."""
    return sum(call_cost + (stop - start) * lengths[start] for start, stop in bounds)


def every_plan(count, batch_size):
    """Every way to cut `count` sorted sentences into batches of at most batch_size."""
    for cuts in itertools.product([False, True], repeat=count - 1):
        starts = [0] + [i + 1 for i, cut in enumerate(cuts) if cut]
        bounds = list(zip(starts, starts[1:] + [count]))
        if all(stop - start <= batch_size for start, stop in bounds):
            yield bounds


@pytest.mark.parametrize("seed", range(30))
def test_least_padding_bounds_finds_the_cheapest_plan(seed):
    rng = np.random.default_rng(seed)
    count, batch_size, call_cost = int(rng.integers(1, 11)), int(rng.integers(1, 6)), float(rng.choice([0, 3, 20, 500]))
    lengths = np.sort(rng.integers(1, 60, size=count))[::-1]
    bounds = least_padding_bounds(lengths, batch_size, call_cost)
    assert [i for start, stop in bounds for i in range(start, stop)] == list(range(count))
    assert all(1 <= stop - start <= batch_size for start, stop in bounds)
    best = min(plan_cost(lengths, plan, call_cost) for plan in every_plan(count, batch_size))
    assert plan_cost(lengths, bounds, call_cost) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(30))
def test_least_padding_bounds_keeps_each_batch_within_batch_tokens_at_least_cost(seed):
    rng = np.random.default_rng(seed)
    count, batch_size, call_cost = int(rng.integers(1, 11)), int(rng.integers(1, 6)), float(rng.choice([0, 3, 20]))
    lengths = np.sort(rng.integers(1, 60, size=count))[::-1]
    batch_tokens = int(rng.integers(30, 150))

    def fits(plan):  # a sentence longer than batch_tokens goes alone
        return all(stop - start == 1 or (stop - start) * lengths[start] <= batch_tokens for start, stop in plan)

    bounds = least_padding_bounds(lengths, batch_size, call_cost, batch_tokens)
    assert [i for start, stop in bounds for i in range(start, stop)] == list(range(count))
    assert fits(bounds) and all(stop - start <= batch_size for start, stop in bounds)
    best = min(plan_cost(lengths, plan, call_cost) for plan in every_plan(count, batch_size) if fits(plan))
    assert plan_cost(lengths, bounds, call_cost) == pytest.approx(best)


def test_a_batch_full_in_tokens_is_not_held_for_the_next_chunk():
    lengths = np.array([256] * 10 + [10] * 3)
    plan = plan_chunk(lengths, 32, lambda n: None, carried=0, final=False, call_cost_tokens=20.0, batch_tokens=1024)
    assert [len(rows) for rows in plan.batches] == [4, 4]  # 4 x 256 tokens fill a batch; submitted now
    assert sorted(lengths[plan.held].tolist()) == [10, 10, 10, 256, 256]  # room left in these: held


def test_free_calls_give_batches_of_one_length_and_dear_ones_the_fewest_batches():
    lengths = np.sort(np.random.default_rng(1).integers(1, 40, size=300))[::-1]
    free = least_padding_bounds(lengths, 32, 0.0)
    assert all(lengths[start] == lengths[stop - 1] for start, stop in free)  # no padding at all
    dear = least_padding_bounds(lengths, 32, 1e9)
    assert len(dear) == -(-300 // 32)


def test_without_buckets_a_call_cost_cuts_where_padding_would_cost_more():
    lengths = np.array([40, 39, 38] + [8] * 29)  # 3 long sentences, 29 short, at batch 32
    plain = list(batch_bounds(lengths, 32, lambda n: None))
    assert plain == [(0, 32)]  # 32 x 40 = 1,280 tokens for 586 real ones
    cut = list(batch_bounds(lengths, 32, lambda n: None, call_cost_tokens=20.0))
    assert cut == [(0, 3), (3, 32)]  # 3 x 40 + 29 x 8 = 352 tokens, and one more call
    by_bucket = list(batch_bounds(lengths, 32, lambda n: n, call_cost_tokens=20.0))
    assert len(by_bucket) == 4  # buckets still decide where they apply: one width per call
