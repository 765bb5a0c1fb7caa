"""Host embedding: word + position + token-type rows, then LayerNorm. Pure NumPy, no model file needed.

This is the stage the NPU cannot run, so on an NPU deployment it is the CPU's hot path. It is one
gather per table and one fused LayerNorm over the whole batch: no Python loop over tokens or sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # position + token-type 0, precomputed: single sentences are all type 0, so the hot path adds once.
    position_plus_type0: np.ndarray = field(init=False, repr=False)  # [max_positions, hidden]

    def __post_init__(self) -> None:
        object.__setattr__(self, "position_plus_type0", self.position + self.token_type[0])

    @property
    def hidden_size(self) -> int:
        return int(self.word.shape[1])

    @property
    def max_positions(self) -> int:
        return int(self.position.shape[0])


def embed(
    tables: EmbeddingTables,
    input_ids: np.ndarray,
    token_type_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Embed token ids the way BertEmbeddings does (absolute positions 0..seq-1).

    input_ids: int [batch, seq] (or [seq]); token_type_ids: same shape, or None for all zeros.
    Returns float32 [batch, seq, hidden] (or [seq, hidden]).
    """
    seq_len = input_ids.shape[-1]
    if seq_len > tables.max_positions:
        raise ValueError(f"sequence of {seq_len} tokens is longer than the {tables.max_positions} position rows")
    hidden = tables.word[input_ids]  # [batch, seq, hidden], a fresh array we can update in place
    if token_type_ids is None:
        hidden += tables.position_plus_type0[:seq_len]
    else:
        hidden += tables.position[:seq_len]
        hidden += tables.token_type[token_type_ids]
    return layer_norm(hidden, tables.layer_norm_weight, tables.layer_norm_bias, tables.layer_norm_eps, out=hidden)


def layer_norm(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    eps: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """LayerNorm over the last axis, float32, with the biased variance torch uses. `out` may be `x`."""
    hidden_size = x.shape[-1]
    mean = x @ np.full((hidden_size, 1), 1.0 / hidden_size, dtype=np.float32)  # [..., 1], BLAS is fastest here
    centered = np.subtract(x, mean, out=out)
    variance = np.einsum("...h,...h->...", centered, centered)[..., None]  # sum of squares, no temporary
    variance /= hidden_size
    variance += eps
    inverse_std = np.reciprocal(np.sqrt(variance, out=variance), out=variance)
    centered *= inverse_std
    centered *= weight
    centered += bias
    return centered
