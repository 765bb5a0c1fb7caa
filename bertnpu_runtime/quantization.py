"""Quantized sentence vectors, with sentence-transformers' `quantize_embeddings` semantics: int8 and
uint8 by per-dimension ranges (given, from calibration embeddings, or from the embeddings
themselves), binary and ubinary as packed sign bits."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger("bertnpu")

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, found {precision!r:.40}")


def quantize_embeddings(
    embeddings: np.ndarray,
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """float32 [n, dim] -> the vectors in `precision`: "float32" (unchanged), "int8" / "uint8"
    ([n, dim], 256 steps between each dimension's min and max from `ranges` [2, dim], else from
    `calibration_embeddings`, else from `embeddings`), "binary" / "ubinary" ([n, ceil(dim / 8)],
    the bits of value > 0, packed; binary shifted by -128 into int8)."""
    check_precision(precision)
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.int8, np.uint8):
        raise TypeError("embeddings to quantize must be float, not int8 or uint8")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:  # nothing to calibrate or pack
        dim = embeddings.shape[1]
        columns = dim if precision.endswith("int8") else (dim + 7) // 8
        return np.zeros((0, columns), dtype=np.int8 if precision in ("int8", "binary") else np.uint8)
    if precision.endswith("int8"):
        if ranges is None:
            ranges = _ranges(embeddings, precision, calibration_embeddings)
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        values = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return values.astype(np.uint8) if precision == "uint8" else (values - 128).astype(np.int8)
    bits = np.packbits(embeddings > 0, axis=-1)
    return (bits - 128).astype(np.int8) if precision == "binary" else bits


def _ranges(embeddings: np.ndarray, precision: str, calibration_embeddings: np.ndarray | None) -> np.ndarray:
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise ValueError(
                f"cannot compute {precision} quantization ranges from a single embedding: quantize_embeddings() "
                "it with `ranges` or `calibration_embeddings` from a representative set of embeddings"
            )
        if embeddings.shape[0] < 100:
            logger.warning(
                "%s quantization ranges computed from %d embeddings; more, or calibration embeddings, make them steadier",
                precision,
                len(embeddings),
            )
        calibration_embeddings = embeddings
    calibration_embeddings = np.asarray(calibration_embeddings)
    return np.vstack((calibration_embeddings.min(axis=0), calibration_embeddings.max(axis=0)))
