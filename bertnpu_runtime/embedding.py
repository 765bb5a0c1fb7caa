"""Host embedding: word + position + token-type rows, then LayerNorm. Pure NumPy, no model file needed.

This is the stage the NPU cannot run, so on an NPU deployment it is the CPU's hot path. A sentence
embeds as x = word[id] + position[p] + token_type[0], and LayerNorm(x) = (x - mean) / std * weight
+ bias. Done literally, that is about eight passes over the [batch, seq, hidden] array. Every term
the mean and variance need can be prepared once, when the tables are loaded:
- centering each table row makes x centered: its mean is 0, with no pass to compute or subtract it;
- the variance is (|w|^2 + 2 w.p + |p|^2) / hidden for the centered rows w and p: the squared norms
  are one number per row and w.p for every (token, position) pair is one matrix product, so
  1 / std is a table over (token, position), read with one gather per batch;
- the LayerNorm weight is folded into the centered rows.
What is left per batch is two gathers, one add, one scale and one shift (adding whole rows of the
LayerNorm bias, since NumPy broadcasts a [hidden] vector over many short rows at half speed).

The 1 / std table has vocab x positions entries. For a 250k vocabulary (XLM-R) it would outweigh
the word table itself, and a pair's second text (token type 1) is not in it; there the variance is
computed per batch instead, one more pass over the batch, and the layer holds the centered word
rows only.

Positions start at `position_offset`: 0 for BERT, padding_idx + 1 for the RoBERTa family and MPNet
(see families.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_WORDS_PER_BLOCK = 4096  # rows of the word table per step of the 1 / std table (8 MB of float64)
# The 1 / std table is kept up to this size (all-MiniLM-L6-v2: 31 MB); past it, variance per batch.
INVERSE_STD_TABLE_BYTES = 64 << 20


@dataclass(frozen=True)
class EmbeddingTables:
    """The embedding weights of a BERT model, float32, as stored in a bundle's embeddings.npz."""

    word: np.ndarray  # [vocab, hidden]
    position: np.ndarray  # [max_positions, hidden]
    token_type: np.ndarray  # [type_vocab, hidden]
    layer_norm_weight: np.ndarray  # [hidden]
    layer_norm_bias: np.ndarray  # [hidden]
    layer_norm_eps: float

    @property
    def hidden_size(self) -> int:
        return int(self.word.shape[1])

    @property
    def max_positions(self) -> int:
        return int(self.position.shape[0])


class EmbeddingLayer:
    """BertEmbeddings (and RoBERTa's, MPNet's) from prepared tables: word + position + token type,
    then LayerNorm; positions from `position_offset` up, token type 0 unless ids are given.

    tables: the model's weights; they are not kept, so the caller may drop them.
    max_length: the longest sequence to embed (the bundle's max_seq_length; at most the position
        rows after the offset).
    position_offset: the position id of a sentence's first token.
    token_types: batches may carry token type ids (a cross-encoder's pairs).
    reuse_tables: the tables' arrays may be overwritten, which saves a copy of the word table while
        loading (SentenceEncoder's tables are its own).
    Memory: the centered word rows (the size of the word table), plus the vocab x max_length 1 / std
    table while it is at most INVERSE_STD_TABLE_BYTES and no token types are used.
    """

    def __init__(
        self,
        tables: EmbeddingTables,
        max_length: int | None = None,
        *,
        position_offset: int = 0,
        token_types: bool = False,
        reuse_tables: bool = False,
    ) -> None:
        usable = tables.max_positions - position_offset
        max_length = usable if max_length is None else max_length
        if not 1 <= max_length <= usable:
            raise ValueError(
                f"max_length must be 1..{usable} (the position rows after offset {position_offset}), found {max_length}"
            )
        self.hidden_size = tables.hidden_size
        self.max_length = max_length
        self.vocab_size = len(tables.word)
        self._eps = tables.layer_norm_eps
        self._weight = tables.layer_norm_weight.astype(np.float32)
        self._bias_rows = np.tile(tables.layer_norm_bias.astype(np.float32), (max_length, 1))  # [max_length, hidden]

        positions = tables.position[position_offset : position_offset + max_length] + tables.token_type[0]
        positions = _centered(positions)  # [max_length, hidden]
        words = _centered(tables.word, in_place=reuse_tables)  # [vocab, hidden]
        # Token type k adds token_type[k] - token_type[0] to a row (type 0 is in the position rows).
        self._type_shifts = _centered(tables.token_type - tables.token_type[0]) if token_types else None
        self._per_batch = token_types or self.vocab_size * max_length * 4 > INVERSE_STD_TABLE_BYTES
        if self._per_batch:
            self._words, self._positions = words, positions
        else:
            self._inverse_std = _inverse_std_table(words, positions, self._eps)  # [vocab, max_length]
            self._positions = positions * self._weight  # [max_length, hidden], scaled
            words *= self._weight
            self._words = words  # [vocab, hidden], scaled
        self._position_index = np.arange(max_length)

    def __call__(
        self, input_ids: np.ndarray, out: np.ndarray | None = None, token_type_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """input_ids int [batch, seq] (or [seq]) -> float32 [batch, seq, hidden] (or [seq, hidden]),
        LayerNorm(word + position + token type) as the model's embeddings compute it, written into
        `out` (C-contiguous float32 of that shape) when given, else into a fresh array.
        token_type_ids (the same shape as input_ids) is only for a layer made with token_types."""
        seq_len = input_ids.shape[-1]
        if seq_len > self.max_length:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than this embedding's max_length {self.max_length}"
            )
        if token_type_ids is not None and self._type_shifts is None:
            raise ValueError("token_type_ids given to an embedding layer made without token_types")
        if self._per_batch:
            return self._embed_per_batch(input_ids, out, token_type_ids)
        inverse_std = self._inverse_std[input_ids, self._position_index[:seq_len]]  # [batch, seq]; checks the ids
        # mode="wrap" reads ids as the line above does; with out=, the default mode writes a temporary first
        hidden = np.take(self._words, input_ids, axis=0, out=out, mode="wrap")  # [batch, seq, hidden]
        hidden += self._positions[:seq_len]
        hidden *= inverse_std[..., None]
        hidden += self._bias_rows[:seq_len]
        return hidden

    def _embed_per_batch(
        self, input_ids: np.ndarray, out: np.ndarray | None, token_type_ids: np.ndarray | None
    ) -> np.ndarray:
        """The same LayerNorm with the variance computed from the batch itself."""
        if input_ids.size and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < self.vocab_size:
            raise IndexError(f"token ids must be 0..{self.vocab_size - 1}, found {input_ids.min()}..{input_ids.max()}")
        seq_len = input_ids.shape[-1]
        hidden = np.take(self._words, input_ids, axis=0, out=out, mode="wrap")  # [batch, seq, hidden], centered
        hidden += self._positions[:seq_len]
        if token_type_ids is not None and token_type_ids.any():
            assert self._type_shifts is not None  # checked by __call__
            hidden += self._type_shifts[token_type_ids]
        variance = np.einsum("...h,...h->...", hidden, hidden) / np.float32(self.hidden_size)  # rows are centered
        hidden *= (1.0 / np.sqrt(variance + np.float32(self._eps)))[..., None]
        hidden *= self._weight
        hidden += self._bias_rows[:seq_len]
        return hidden


def _inverse_std_table(words: np.ndarray, positions: np.ndarray, eps: float) -> np.ndarray:
    """float32 [vocab, positions]: 1 / sqrt(var + eps) of every centered word row plus position row,
    var = (|w|^2 + 2 w.p + |p|^2) / hidden, in float64 a block of words at a time (bounded memory)."""
    hidden = words.shape[1]
    table = np.empty((len(words), len(positions)), dtype=np.float32)
    position_sq = _squared_norms(positions)
    for start in range(0, len(words), _WORDS_PER_BLOCK):
        block = words[start : start + _WORDS_PER_BLOCK]
        sum_sq = 2.0 * (block @ positions.T).astype(np.float64)
        sum_sq += _squared_norms(block)[:, None]
        sum_sq += position_sq
        table[start : start + len(block)] = 1.0 / np.sqrt(sum_sq / hidden + eps)
    return table


def _centered(rows: np.ndarray, in_place: bool = False) -> np.ndarray:
    """float32 rows minus their own mean (accumulated in float64); `rows` itself when in_place."""
    means = rows.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    if in_place and rows.dtype == np.float32 and rows.flags.writeable:
        rows -= means
        return rows
    return rows - means


def _squared_norms(rows: np.ndarray) -> np.ndarray:
    """Each row's sum of squares, accumulated in float64."""
    return np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
