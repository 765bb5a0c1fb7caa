"""Similarity scores between sentence vectors, as sentence-transformers' similarity functions."""

from __future__ import annotations

import numpy as np

from .pooling import l2_normalize

SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")


def similarity(a: np.ndarray, b: np.ndarray, function: str = "cosine") -> np.ndarray:
    """float32 [n, m] scores between the rows of `a` [n, dim] and `b` [m, dim] (1-D inputs are one
    row): cosine similarity, dot product, or the negated euclidean / manhattan distance."""
    if function not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"similarity function must be one of {SIMILARITY_FUNCTIONS}, found {function!r:.40}")
    a = np.atleast_2d(np.asarray(a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(b, dtype=np.float32))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"vectors of different sizes: {a.shape[1]} and {b.shape[1]}")
    if function == "cosine":
        return l2_normalize(a) @ l2_normalize(b).T
    if function == "dot":
        return a @ b.T
    differences = a[:, None, :] - b[None, :, :]
    if function == "euclidean":
        return -np.sqrt((differences**2).sum(axis=-1))
    return -np.abs(differences).sum(axis=-1)
