"""Comparing sentence vectors in tests."""

from __future__ import annotations

import numpy as np


def cosine_rows(a: object, b: object) -> np.ndarray:
    """The cosine similarity of each row of `a` with the same row of `b` (a 1-D input is one row);
    lists (a server's JSON) are taken as arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
