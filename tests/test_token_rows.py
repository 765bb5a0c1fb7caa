"""Rows (token ids of texts back to back) put together in text order."""

import numpy as np

from bertnpu_runtime.token_rows import interleave, rows_of, segment_positions


def test_interleave_puts_every_text_at_its_index():
    evens = rows_of([[1, 2, 3], [], [7]], [False, True, False])  # texts 0, 2, 4
    odds = rows_of([[4], [5, 6]], [True, False])  # texts 1, 3
    ids, lengths, truncated = interleave(5, [(np.array([0, 2, 4]), evens), (np.array([1, 3]), odds)])
    assert ids.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert lengths.tolist() == [3, 1, 0, 2, 1]
    assert truncated.tolist() == [False, True, True, False, False]


def test_interleave_with_an_empty_part():
    rows = rows_of([[9, 8], [7]], [False, False])
    ids, lengths, _ = interleave(2, [(np.array([1, 0]), rows), (np.array([], dtype=np.intp), rows_of([], []))])
    assert ids.tolist() == [7, 9, 8] and lengths.tolist() == [1, 2]


def test_segment_positions_lists_each_segment_in_turn():
    starts, lengths = np.array([5, 0, 9, 2]), np.array([3, 2, 0, 1])
    assert segment_positions(starts, lengths).tolist() == [5, 6, 7, 0, 1, 2]
    assert segment_positions(np.array([], np.int64), np.array([], np.int64)).tolist() == []
