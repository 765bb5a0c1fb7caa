"""Pooling of the encoder's last hidden states into one vector per sentence, and L2 normalization,
as sentence-transformers' Pooling module computes them (right-padded batches)."""

from __future__ import annotations

import numpy as np

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def pool(hidden: np.ndarray, attention_mask: np.ndarray, mode: str = "mean", skip_tokens: int = 0) -> np.ndarray:
    """Pool [batch, seq, hidden] over real tokens only (attention_mask [batch, seq], 1 = real).

    mean: masked mean (sentence-transformers' default); cls: the first token pooled; max: masked
    max; mean_sqrt_len_tokens: masked sum / sqrt(tokens); weightedmean: tokens weighted by their
    position (1, 2, ...); lasttoken: the last real token. `skip_tokens` leaves the first tokens (a
    prompt, with [CLS]) out, as sentence-transformers does for a Pooling with include_prompt=False.
    Returns float32 [batch, hidden].
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")
    if skip_tokens:
        attention_mask = attention_mask.copy()
        attention_mask[:, :skip_tokens] = 0
    if mode == "cls":
        if not skip_tokens:
            return np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)
        first = np.argmax(attention_mask != 0, axis=1)  # the first pooled token
        return hidden[np.arange(len(hidden)), first].astype(np.float32)
    if mode in ("mean", "mean_sqrt_len_tokens", "weightedmean"):
        weights = attention_mask.astype(hidden.dtype)  # [batch, seq]
        if mode == "weightedmean":
            weights *= np.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[None, :]
        total = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        weights /= np.sqrt(total) if mode == "mean_sqrt_len_tokens" else total
        pooled = np.matmul(weights[:, None, :], hidden)[:, 0, :]  # [batch, hidden]: one product per sentence
        return pooled.astype(np.float32, copy=False)
    if mode == "max":
        masked = np.where(attention_mask.astype(bool)[:, :, None], hidden, np.float32(-np.inf))
        return masked.max(axis=1).astype(np.float32, copy=False)
    # lasttoken: the last real token, or the last position when none is real, as sentence-transformers picks it
    seq = hidden.shape[1]
    real = attention_mask != 0
    last = np.where(real.any(axis=1), seq - 1 - np.argmax(real[:, ::-1], axis=1), seq - 1)
    rows = np.arange(len(hidden))
    return (hidden[rows, last] * real[rows, last][:, None]).astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def truncate_and_normalize(vectors: np.ndarray, truncate_dim: int | None, normalize: bool) -> np.ndarray:
    """float32 [n, truncate_dim or dim], C-contiguous: the first `truncate_dim` dimensions of each
    vector (Matryoshka), then L2-normalized when `normalize`, in sentence-transformers' order. The
    one place encode() and the server shorten and normalize vectors."""
    if truncate_dim is not None:
        vectors = vectors[:, :truncate_dim]
    if normalize:
        vectors = l2_normalize(vectors)
    return np.ascontiguousarray(vectors, dtype=np.float32)
