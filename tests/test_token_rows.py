"""TokenRows (token ids of texts back to back) put together in text order."""

import numpy as np

from bertnpu_runtime.tokenize import TokenRows
from bertnpu_runtime.tokenize.token_rows import segment_positions


def test_interleave_puts_every_text_at_its_index():
    evens = TokenRows.from_lists([[1, 2, 3], [], [7]], [False, True, False])  # texts 0, 2, 4
    odds = TokenRows.from_lists([[4], [5, 6]], [True, False])  # texts 1, 3
    rows = TokenRows.interleave(5, [(np.array([0, 2, 4]), evens), (np.array([1, 3]), odds)])
    assert rows.ids.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert rows.lengths.tolist() == [3, 1, 0, 2, 1]
    assert rows.truncated.tolist() == [False, True, True, False, False]
    assert rows.starts.tolist() == [0, 3, 4, 4, 6]


def test_interleave_with_an_empty_part():
    rows = TokenRows.from_lists([[9, 8], [7]], [False, False])
    joined = TokenRows.interleave(2, [(np.array([1, 0]), rows), (np.array([], dtype=np.intp), TokenRows.empty())])
    assert joined.ids.tolist() == [7, 9, 8] and joined.lengths.tolist() == [1, 2]


def test_padded_take_and_concatenate():
    rows = TokenRows.from_lists([[1, 2, 3], [4], [5, 6]], [False, True, False])
    batch = rows.padded(np.array([2, 1]))
    assert batch.input_ids.tolist() == [[5, 6], [4, 0]] and batch.attention_mask.tolist() == [[1, 1], [1, 0]]
    assert batch.truncated.tolist() == [False, True]
    both = TokenRows.concatenate([rows.take(np.array([1])), rows.take(np.array([0]))])
    assert both.ids.tolist() == [4, 1, 2, 3] and len(both) == 2


def test_segment_positions_lists_each_segment_in_turn():
    starts, lengths = np.array([5, 0, 9, 2]), np.array([3, 2, 0, 1])
    assert segment_positions(starts, lengths).tolist() == [5, 6, 7, 0, 1, 2]
    assert segment_positions(np.array([], np.int64), np.array([], np.int64)).tolist() == []
