"""Pooling of the encoder's last hidden states into one vector per sentence, and L2 normalization."""

from __future__ import annotations

import numpy as np

POOLING_MODES = ("mean", "cls", "max")


def pool(hidden: np.ndarray, attention_mask: np.ndarray, mode: str = "mean") -> np.ndarray:
    """Pool [batch, seq, hidden] over real tokens only (attention_mask [batch, seq], 1 = real).

    mean: masked mean (sentence-transformers' default); cls: first token; max: masked max.
    Returns float32 [batch, hidden].
    """
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)
    if mode == "mean":
        weights = attention_mask.astype(hidden.dtype)  # [batch, seq]: 1 / count on real tokens, 0 on padding
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1)
        mean = np.matmul(weights[:, None, :], hidden)[:, 0, :]  # [batch, hidden]: one product per sentence
        return mean.astype(np.float32, copy=False)
    if mode == "max":
        masked = np.where(attention_mask.astype(bool)[:, :, None], hidden, np.float32(-np.inf))
        return masked.max(axis=1).astype(np.float32, copy=False)
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
