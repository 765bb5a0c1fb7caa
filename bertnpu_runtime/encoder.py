"""SentenceEncoder: texts in, sentence vectors out.

One text goes tokenize -> embed (host) -> encoder (NPU or ONNX) -> pool -> normalize. Texts are
tokenized together, sorted by token length so each batch carries little padding, and the host
prepares the next batch while the encoder works on the current one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np

from .backends.base import EncoderBackend
from .backends.selection import open_backend
from .bundle import TOKENIZER_FILE, Bundle
from .embedding import embed
from .pooling import l2_normalize, pool
from .tokenization import TokenizedBatch, Tokenizer, validate_texts

logger = logging.getLogger("bertnpu")


class SentenceEncoder:
    """Sentence vectors from a bertnpu bundle, with the encoder on a Mobilint NPU or ONNX Runtime.

    Args:
        bundle_dir: a folder written by `python -m compile`.
        backend: "auto" (NPU when a device and a model.mxq are present, else ONNX), "npu" or "onnx".
        precision: "float32", or "int8" for the bundle's encoder.int8.onnx (ONNX backend only).
        device_no: which NPU device to open.
        npu_cores: NPU cores to launch model instances on: a count, or (cluster, core) pairs.
        num_threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice, all cores).
        verify_bundle: check every file used against its SHA-256 in bundle.json.
        qbruntime_module: a stand-in for `qbruntime` (see bertnpu_runtime.testing); None for the real one.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        backend: str = "auto",
        *,
        precision: str = "float32",
        device_no: int = 0,
        npu_cores: int | Sequence[tuple[int, int]] | None = None,
        num_threads: int | None = None,
        verify_bundle: bool = True,
        qbruntime_module: ModuleType | None = None,
    ) -> None:
        bundle = Bundle(bundle_dir, verify=verify_bundle)
        self.manifest = bundle.manifest
        self._tables = bundle.load_embeddings()
        self._tokenizer = Tokenizer(bundle.path(TOKENIZER_FILE), self.manifest.max_seq_length)
        self._encoder: EncoderBackend | None = open_backend(
            bundle,
            backend,
            precision=precision,
            device_no=device_no,
            npu_cores=npu_cores,
            num_threads=num_threads,
            qbruntime_module=qbruntime_module,
        )
        self.backend: str = self._encoder.name
        self.precision = precision

    @property
    def dim(self) -> int:
        """Length of each sentence vector."""
        return self.manifest.hidden_size

    @property
    def max_seq_length(self) -> int:
        """Texts longer than this many tokens (with [CLS] and [SEP]) are truncated."""
        return self.manifest.max_seq_length

    def tokenize(self, texts: str | Sequence[str]) -> TokenizedBatch:
        """Token ids exactly as encode() sees them; `.truncated` tells which texts were cut."""
        return self._tokenizer.encode(validate_texts([texts] if isinstance(texts, str) else texts))

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
    ) -> np.ndarray:
        """Encode sentences to float32 vectors, as sentence-transformers' `encode` does.

        Returns [n, dim] for a list (in input order; [0, dim] for an empty list) and [dim] for a
        single str. Vectors are L2-normalized when `normalize_embeddings` is set or the model itself
        normalizes (bundle.json "normalize"). Texts over `max_seq_length` tokens are truncated and
        a warning is logged; see `tokenize()` to check beforehand.
        """
        if self._encoder is None:
            raise RuntimeError("this SentenceEncoder is closed")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, found {batch_size!r}")
        single = isinstance(sentences, str)
        texts = validate_texts([sentences] if single else sentences)

        tokens = self._tokenizer.encode(texts)
        _warn_if_truncated(tokens.truncated, self.max_seq_length)
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows, pooled in self._pooled_batches(tokens, batch_size, _wants_progress(show_progress_bar)):
            vectors[rows] = pooled

        if normalize_embeddings or self.manifest.normalize:
            vectors = l2_normalize(vectors)
        return vectors[0] if single else vectors

    def _pooled_batches(
        self, tokens: TokenizedBatch, batch_size: int, progress: bool
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices, pooled vectors) per batch, keeping up to pipeline_depth batches in the encoder."""
        order = np.argsort(-tokens.lengths, kind="stable")  # longest first: padding stays small
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if progress:
            batches = _progress(batches)
        encoder = self._encoder
        if len(order) <= batch_size:  # one batch: no thread hand-off on the latency path
            for rows in batches:
                hidden, mask = self._embed_batch(tokens, rows)
                yield rows, pool(encoder.run(hidden, mask), mask, self.manifest.pooling)
            return

        in_flight: list[tuple[np.ndarray, np.ndarray, Future]] = []
        with ThreadPoolExecutor(max_workers=encoder.pipeline_depth, thread_name_prefix="bertnpu-encoder") as workers:
            for rows in batches:
                hidden, mask = self._embed_batch(tokens, rows)  # runs while earlier batches are encoded
                in_flight.append((rows, mask, workers.submit(encoder.run, hidden, mask)))
                if len(in_flight) > encoder.pipeline_depth:
                    yield self._finish(*in_flight.pop(0))
            for batch in in_flight:
                yield self._finish(*batch)

    def _embed_batch(self, tokens: TokenizedBatch, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seq_len = int(tokens.lengths[rows].max())
        input_ids = tokens.input_ids[rows, :seq_len]  # [batch, seq]
        mask = tokens.attention_mask[rows, :seq_len]  # [batch, seq]
        return embed(self._tables, input_ids), mask  # [batch, seq, hidden]

    def _finish(self, rows: np.ndarray, mask: np.ndarray, future: Future) -> tuple[np.ndarray, np.ndarray]:
        return rows, pool(future.result(), mask, self.manifest.pooling)

    def close(self) -> None:
        """Release the encoder backend (the NPU models and device). Safe to call twice."""
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None

    def __enter__(self) -> SentenceEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SentenceEncoder(model={self.manifest.source_model!r}, backend={self.backend!r}, "
            f"precision={self.precision!r}, dim={self.dim}, max_seq_length={self.max_seq_length})"
        )


def _warn_if_truncated(truncated: np.ndarray, max_seq_length: int) -> None:
    count = int(truncated.sum())
    if count:
        first = int(np.flatnonzero(truncated)[0])
        logger.warning(
            "%d of %d texts were longer than %d tokens and were truncated (first at index %d); "
            "SentenceEncoder.tokenize() shows which",
            count,
            len(truncated),
            max_seq_length,
            first,
        )


def _wants_progress(show_progress_bar: bool | None) -> bool:
    if show_progress_bar is None:  # sentence-transformers' rule: show it when logging is verbose
        return logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    return show_progress_bar


def _progress(batches: list[np.ndarray]) -> list[np.ndarray]:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.warning("show_progress_bar needs tqdm: pip install tqdm")
        return batches
    return tqdm(batches, desc="Batches", unit="batch")
