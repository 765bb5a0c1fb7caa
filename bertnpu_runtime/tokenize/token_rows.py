"""Token rows: the token ids of several texts back to back, unpadded, and the padded batch made
from some of them. The one form token data takes from the tokenizer to the embedding."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TokenizedBatch:
    """Token ids of a batch, right-padded to its longest member."""

    input_ids: np.ndarray  # int64 [batch, seq]
    attention_mask: np.ndarray  # int64 [batch, seq], 1 = real token
    lengths: np.ndarray  # int64 [batch], real tokens per sentence (with [CLS]/[SEP])
    truncated: np.ndarray  # bool [batch], True where the text had more than max_seq_length tokens
    token_type_ids: np.ndarray | None = None  # int64 [batch, seq] for pairs (0, then 1); None: all 0


@dataclass(frozen=True)
class TokenRows:
    """Token ids of several texts back to back, unpadded; `padded(rows)` makes a batch of some of them."""

    ids: np.ndarray  # int64 [total tokens], text after text
    lengths: np.ndarray  # int64 [texts], tokens per text (with [CLS]/[SEP])
    truncated: np.ndarray  # bool [texts], True where the text had more than max_seq_length tokens
    type_ids: np.ndarray | None = None  # int64 [total tokens], a pair's token types; None: all 0
    starts: np.ndarray = field(init=False, repr=False)  # int64 [texts], where each text's ids begin

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", np.cumsum(self.lengths) - self.lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def empty(cls) -> TokenRows:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool))

    @classmethod
    def from_lists(
        cls, ids_per_text: list[list[int]], truncated: list[bool], type_ids_per_text: list[list[int]] | None = None
    ) -> TokenRows:
        """Rows from a list of ids (and, for pairs, token types) per text."""
        lengths = np.array([len(ids) for ids in ids_per_text], dtype=np.int64)
        total = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(ids_per_text), dtype=np.int64, count=total)
        types = None
        if type_ids_per_text is not None:
            types = np.fromiter(itertools.chain.from_iterable(type_ids_per_text), dtype=np.int64, count=total)
        return cls(flat, lengths, np.array(truncated, dtype=bool), types)

    def padded(self, rows: np.ndarray | None = None) -> TokenizedBatch:
        """The texts `rows` (default: all, in order), right-padded to the longest of them."""
        pick = slice(None) if rows is None else rows
        lengths, starts, truncated = self.lengths[pick], self.starts[pick], self.truncated[pick]
        seq_len = int(lengths.max()) if len(lengths) else 0
        if len(lengths) and lengths.min() == seq_len:  # one length (every NPU batch): no padding
            positions = starts[:, None] + np.arange(seq_len)
            input_ids = self.ids[positions]
            types = None if self.type_ids is None else self.type_ids[positions]
            return TokenizedBatch(input_ids, np.ones(input_ids.shape, dtype=np.int64), lengths, truncated, types)
        keep = np.arange(seq_len) < lengths[:, None]  # [batch, seq]
        positions = np.where(keep, starts[:, None] + np.arange(seq_len), 0)  # index into ids; 0 where padding
        input_ids = np.where(keep, self.ids[positions], 0)
        types = None if self.type_ids is None else np.where(keep, self.type_ids[positions], 0)
        return TokenizedBatch(input_ids, keep.astype(np.int64), lengths, truncated, types)

    def slice(self, first: int, last: int) -> TokenRows:
        """The texts first..last-1, their ids a view (no copy)."""
        begin = int(self.starts[first]) if first < len(self) else len(self.ids)
        end = begin + int(self.lengths[first:last].sum())
        types = None if self.type_ids is None else self.type_ids[begin:end]
        return TokenRows(self.ids[begin:end], self.lengths[first:last], self.truncated[first:last], types)

    def take(self, rows: np.ndarray) -> TokenRows:
        """The texts `rows`, in that order, still unpadded."""
        lengths = self.lengths[rows]
        positions = segment_positions(self.starts[rows], lengths)
        types = None if self.type_ids is None else self.type_ids[positions]
        return TokenRows(self.ids[positions], lengths, self.truncated[rows], types)

    @staticmethod
    def concatenate(parts: list[TokenRows]) -> TokenRows:
        """The texts of every part, part after part."""
        if len(parts) == 1:
            return parts[0]
        ids, lengths, truncated = (
            np.concatenate(arrays) for arrays in zip(*((p.ids, p.lengths, p.truncated) for p in parts))
        )
        typed = [p.type_ids is not None for p in parts]
        if any(typed) and not all(typed):
            raise ValueError("cannot join the rows of single texts with the rows of pairs")
        types = np.concatenate([p.type_ids for p in parts if p.type_ids is not None]) if all(typed) else None
        return TokenRows(ids, lengths, truncated, types)

    @staticmethod
    def interleave(count: int, parts: list[tuple[np.ndarray, TokenRows]]) -> TokenRows:
        """The rows of `count` texts, from parts that each hold the rows of the texts at its indices
        (every index in exactly one part), in text order."""
        lengths = np.empty(count, dtype=np.int64)
        truncated = np.empty(count, dtype=bool)
        for indices, part in parts:
            lengths[indices], truncated[indices] = part.lengths, part.truncated
        starts = np.cumsum(lengths) - lengths  # where each text's ids begin in the result
        ids = np.empty(int(lengths.sum()), dtype=np.int64)
        for indices, part in parts:
            ids[segment_positions(starts[indices], part.lengths)] = part.ids
        return TokenRows(ids, lengths, truncated)


def segment_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64 [lengths.sum()]: the positions of segments (start, length) of a flat array, segment
    after segment: starts[0], starts[0] + 1, .., starts[1], ..; to gather them or scatter into them."""
    ends = np.cumsum(lengths)
    positions = np.repeat(starts - (ends - lengths), lengths)  # each segment's start, less where it lands
    positions += np.arange(len(positions))
    return positions
