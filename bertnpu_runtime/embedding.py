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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_WORDS_PER_BLOCK = 4096  # rows of the word table per step of the 1 / std table (8 MB of float64)


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
    """BertEmbeddings for single-sentence input (token type 0, positions 0..seq-1), from prepared tables.

    tables: the model's weights; they are not kept, so the caller may drop them.
    max_length: the longest sequence to embed (the bundle's max_seq_length; at most the position
        rows). The prepared tables take vocab x (hidden + max_length) float32: the gamma-scaled
        centered word rows, the size of the word table itself, plus 1 / std for every pair.
    """

    def __init__(self, tables: EmbeddingTables, max_length: int | None = None) -> None:
        max_length = tables.max_positions if max_length is None else max_length
        if not 1 <= max_length <= tables.max_positions:
            raise ValueError(f"max_length must be 1..{tables.max_positions} (the position rows), found {max_length}")
        self.hidden_size = tables.hidden_size
        self.max_length = max_length
        weight = tables.layer_norm_weight.astype(np.float32)
        self._bias_rows = np.tile(tables.layer_norm_bias.astype(np.float32), (max_length, 1))  # [max_length, hidden]

        positions = _centered(tables.position[:max_length] + tables.token_type[0])  # [max_length, hidden]
        words = _centered(tables.word)  # [vocab, hidden]
        self._inverse_std = _inverse_std_table(words, positions, tables.layer_norm_eps)  # [vocab, max_length]
        self._positions_scaled = positions * weight  # [max_length, hidden]
        words *= weight
        self._words_scaled = words  # [vocab, hidden]
        self._position_index = np.arange(max_length)

    def __call__(self, input_ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """input_ids int [batch, seq] (or [seq]) -> float32 [batch, seq, hidden] (or [seq, hidden]),
        LayerNorm(word + position + token type 0) as BertEmbeddings computes it; written into `out`
        (C-contiguous float32 of that shape) when given, else into a fresh array."""
        seq_len = input_ids.shape[-1]
        if seq_len > self.max_length:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than this embedding's max_length {self.max_length}"
            )
        inverse_std = self._inverse_std[input_ids, self._position_index[:seq_len]]  # [batch, seq]; checks the ids
        # mode="wrap" reads ids as the line above does; with out=, the default mode writes a temporary first
        hidden = np.take(self._words_scaled, input_ids, axis=0, out=out, mode="wrap")  # [batch, seq, hidden]
        hidden += self._positions_scaled[:seq_len]
        hidden *= inverse_std[..., None]
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


def _centered(rows: np.ndarray) -> np.ndarray:
    """float32 rows minus their own mean (accumulated in float64)."""
    return rows - rows.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)


def _squared_norms(rows: np.ndarray) -> np.ndarray:
    """Each row's sum of squares, accumulated in float64."""
    return np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
