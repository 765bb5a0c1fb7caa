"""Host embedding: word + position + token-type rows, then LayerNorm. Pure NumPy, no model file needed.

This is the stage the NPU cannot run, so on an NPU deployment it is the CPU's hot path. A sentence
embeds as x = word[id] + position[p] + token_type[0], and LayerNorm(x) = (x - mean) / std * weight
+ bias. Done literally, that is about eight passes over the [batch, seq, hidden] array. Every term
the mean and variance need can be prepared once, when the tables are loaded:
- centering each table row makes x centered: its mean is 0, with no pass to compute or subtract it;
- the variance is (|w|^2 + 2 w.p + |p|^2) / hidden for the centered rows w and p; the squared norms
  are one number per row, and w.p for every (token, position) pair is one matrix product;
- the LayerNorm weight is folded into the centered rows.
What is left per batch is one gather, one add, one scale and one shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        centered word rows, the size of the word table itself, plus w.p for every pair.
    """

    def __init__(self, tables: EmbeddingTables, max_length: int | None = None) -> None:
        max_length = tables.max_positions if max_length is None else max_length
        if not 1 <= max_length <= tables.max_positions:
            raise ValueError(f"max_length must be 1..{tables.max_positions} (the position rows), found {max_length}")
        self.hidden_size = tables.hidden_size
        self.max_length = max_length
        self._eps = tables.layer_norm_eps
        self._bias = tables.layer_norm_bias.astype(np.float32)
        weight = tables.layer_norm_weight.astype(np.float32)

        positions = _centered(tables.position[:max_length] + tables.token_type[0])  # [max_length, hidden]
        words = _centered(tables.word)  # [vocab, hidden]
        self._word_dot_position = words @ positions.T  # [vocab, max_length] float32
        self._word_sq = _squared_norms(words)  # [vocab] float64
        self._position_sq = _squared_norms(positions)  # [max_length] float64
        self._positions_scaled = positions * weight  # [max_length, hidden]
        words *= weight
        self._words_scaled = words  # [vocab, hidden]
        self._position_index = np.arange(max_length)

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int [batch, seq] (or [seq]) -> float32 [batch, seq, hidden] (or [seq, hidden]),
        LayerNorm(word + position + token type 0) as BertEmbeddings computes it."""
        seq_len = input_ids.shape[-1]
        if seq_len > self.max_length:
            raise ValueError(f"sequence of {seq_len} tokens is longer than this embedding's max_length {self.max_length}")
        sum_sq = self._word_sq[input_ids]  # [batch, seq] float64: |x|^2 of the centered token vector
        sum_sq += 2.0 * self._word_dot_position[input_ids, self._position_index[:seq_len]]
        sum_sq += self._position_sq[:seq_len]
        inverse_std = (1.0 / np.sqrt(sum_sq / self.hidden_size + self._eps)).astype(np.float32)

        hidden = np.take(self._words_scaled, input_ids, axis=0)  # [batch, seq, hidden], a fresh array
        hidden += self._positions_scaled[:seq_len]
        hidden *= inverse_std[..., None]
        hidden += self._bias
        return hidden


def _centered(rows: np.ndarray) -> np.ndarray:
    """float32 rows minus their own mean (accumulated in float64)."""
    return rows - rows.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)


def _squared_norms(rows: np.ndarray) -> np.ndarray:
    """Each row's sum of squares, accumulated in float64."""
    return np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
