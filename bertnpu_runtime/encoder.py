"""SentenceEncoder: texts in, sentence vectors out.

One text goes tokenize -> embed (host) -> encoder (NPU or ONNX) -> pool -> normalize. Texts are
tokenized a chunk at a time and sorted by token length within it, so each batch carries little
padding (none on the NPU, whose batches hold sentences of one width), and the host prepares the
next batches while the encoder works on the ones submitted.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, TypeVar

import numpy as np

from .backends.base import EncoderBackend, PendingOutput, as_encoder_backend, preferred_batch_size
from .backends.selection import open_backend
from .batch_memory import BatchMemory
from .bundle import TOKENIZER_FILE, Bundle
from .embedding import EmbeddingLayer
from .pooling import l2_normalize, pool
from .tokenization import TokenizedBatch, Tokenizer, UnpaddedTokens, validate_texts

logger = logging.getLogger("bertnpu")

# Texts are tokenized this many batches at a time (see _chunks).
_BATCHES_PER_CHUNK = 32
# An encode()'s batch memory (see batch_memory.py) is kept for the next one up to this size (64 MiB).
_KEPT_BATCH_MEMORY_BYTES = 64 << 20
_Batch = TypeVar("_Batch", bound=tuple)  # (row indices, ...)


class _InFlight(NamedTuple):
    """A batch submitted to the encoder and not yet collected."""

    rows: np.ndarray  # the texts it holds
    hidden: np.ndarray  # [batch, seq, hidden], read by the encoder until its output is ready
    mask: np.ndarray  # [batch, seq]
    pending: PendingOutput


class SentenceEncoder:
    """Sentence vectors from a bertnpu bundle, with the encoder on a Mobilint NPU or ONNX Runtime.

    Args:
        bundle_dir: a folder written by `python -m compile`.
        backend: "auto" (NPU when a device and a model.mxq are present, else ONNX), "npu" or "onnx";
            or an already-open EncoderBackend (for example an OnnxEncoder on another graph; an
            object with just `run(hidden, attention_mask)` works too, run one batch at a time),
            which the SentenceEncoder then owns and closes.
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
        backend: str | EncoderBackend = "auto",
        *,
        precision: str = "float32",
        device_no: int = 0,
        npu_cores: int | Sequence[tuple[int, int]] | None = None,
        num_threads: int | None = None,
        verify_bundle: bool = True,
        qbruntime_module: ModuleType | None = None,
    ) -> None:
        bundle = Bundle(bundle_dir, verify=verify_bundle)
        self.bundle_dir: Path = bundle.directory
        self.manifest = bundle.manifest
        self._embedding = EmbeddingLayer(bundle.load_embeddings(), self.manifest.max_seq_length)
        self._tokenizer = Tokenizer(bundle.path(TOKENIZER_FILE), self.manifest.max_seq_length)
        self.backend_reason = "an open encoder backend was passed in"
        if isinstance(backend, str):
            backend, self.backend_reason = open_backend(
                bundle,
                backend,
                precision=precision,
                device_no=device_no,
                npu_cores=npu_cores,
                num_threads=num_threads,
                qbruntime_module=qbruntime_module,
            )
        self._encoder: EncoderBackend | None = as_encoder_backend(backend)
        self.backend: str = self._encoder.name
        self._opened_in_pid = os.getpid()  # the backend's threads (and NPU models) live in this process only
        # An encoder dropped without close() still releases its backend: NPU cores held by a
        # forgotten encoder would refuse the next one in this process (Acc_CoreAlreadyInUse).
        self._release_backend = weakref.finalize(self, _close_in_process, self._opened_in_pid, self._encoder)
        self.precision = precision
        self._batch_memory: BatchMemory | None = None  # the last encode()'s, for the next
        self._batch_memory_lock = threading.Lock()

    @property
    def dim(self) -> int:
        """Length of each sentence vector."""
        return self.manifest.hidden_size

    @property
    def default_batch_size(self) -> int:
        """The batch_size encode() uses when none is given: 32 on ONNX (sentence-transformers'
        default), 64 on the NPU, where a batch's sentences share one length and each call costs the
        host a thread wake-up."""
        return preferred_batch_size(self._encoder)

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
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
    ) -> np.ndarray:
        """Encode sentences to float32 vectors, as sentence-transformers' `encode` does.

        Returns [n, dim] for a list (in input order; [0, dim] for an empty list) and [dim] for a
        single str. `batch_size` is the most sentences in one encoder call (None: `default_batch_size`).
        Vectors are L2-normalized when `normalize_embeddings` is set or the model itself
        normalizes (bundle.json "normalize"). Texts over `max_seq_length` tokens are truncated and
        a warning is logged; see `tokenize()` to check beforehand.
        """
        if self._encoder is None:
            raise RuntimeError("this SentenceEncoder is closed")
        if os.getpid() != self._opened_in_pid:  # without this, a forked child waits forever
            raise RuntimeError(
                f"this SentenceEncoder was opened in process {self._opened_in_pid} and this is process "
                f"{os.getpid()}, forked from it: the encoder's threads and NPU models do not exist here. "
                "Open a SentenceEncoder in each worker process (or start workers with the 'spawn' method)"
            )
        if batch_size is None:
            batch_size = self.default_batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, found {batch_size!r}")
        single = isinstance(sentences, str)
        texts = validate_texts([sentences] if single else sentences)

        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        truncated: list[int] = []
        memory = self._take_batch_memory()
        batches = self._host_batches(texts, batch_size, truncated, memory)
        if _wants_progress(show_progress_bar):
            batches = _progress(batches, total=len(texts))
        normalize = normalize_embeddings or self.manifest.normalize
        for rows, pooled in self._pooled_batches(batches, memory):
            # Batch by batch, while the encoder runs later ones, rather than all at the end.
            vectors[rows] = l2_normalize(pooled) if normalize else pooled
        self._keep_batch_memory(memory)  # not after an error: its batches may still be on the encoder
        _warn_if_truncated(truncated, len(texts), self.max_seq_length)
        return vectors[0] if single else vectors

    def _take_batch_memory(self) -> BatchMemory:
        """The last encode()'s batch memory, or new memory while another encode() holds it."""
        with self._batch_memory_lock:
            memory, self._batch_memory = self._batch_memory, None
        return memory or BatchMemory()

    def _keep_batch_memory(self, memory: BatchMemory) -> None:
        if memory.nbytes <= _KEPT_BATCH_MEMORY_BYTES:
            with self._batch_memory_lock:
                self._batch_memory = memory

    def _host_batches(
        self, texts: list[str], batch_size: int, truncated: list[int], memory: BatchMemory | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (row indices, hidden [batch, seq, hidden], mask [batch, seq]) per batch of _token_batches;
        hidden is taken from `memory` when given (the consumer gives it back), else a fresh array."""
        for rows, batch in self._token_batches(texts, batch_size, truncated):
            out = None if memory is None else memory.take((*batch.input_ids.shape, self.dim))
            yield rows, self._embedding(batch.input_ids, out), batch.attention_mask

    def _token_batches(
        self, texts: list[str], batch_size: int, truncated: list[int]
    ) -> Iterator[tuple[np.ndarray, TokenizedBatch]]:
        """Yield (row indices, padded token ids) per batch.

        Texts are tokenized a chunk at a time (see _chunks), so the encoder starts on the first
        batches while later ones are tokenized and memory stays bounded; each chunk is sorted
        longest first so a batch holds sentences of similar length and carries little padding, and
        only sentences of one bucket where the backend has buckets (the NPU: one length).

        A batch short of batch_size made only of the chunk's own texts waits for the next chunk,
        where texts of the same length may fill it: fewer, fuller encoder calls, and on the NPU
        each call costs the host a thread wake-up. It goes with the next chunk whatever its size,
        so no text waits longer than one chunk. The last chunk yields its largest batches first,
        so that the encoder's last calls are small and NPU cores finish close together. Truncated
        rows are appended to `truncated`.
        """
        waiting: tuple[np.ndarray, UnpaddedTokens] | None = None  # (text indices, tokens) held back by the last chunk
        for first, last in _chunks(len(texts), batch_size):
            tokens = self._tokenizer.encode_unpadded(texts[first:last])
            truncated.extend((first + np.flatnonzero(tokens.truncated)).tolist())
            indices = np.arange(first, last)  # the text of each row of tokens
            held_count = 0  # rows held back by the last chunk come first
            if waiting is not None:
                held_count = len(waiting[0])
                indices = np.concatenate([waiting[0], indices])
                tokens = UnpaddedTokens.concatenate([waiting[1], tokens])
            final = last == len(texts)
            order = np.argsort(-tokens.lengths, kind="stable")
            bounds = list(_batch_bounds(tokens.lengths[order], batch_size, self._encoder.batch_bucket))
            if final:
                bounds.sort(key=lambda bound: bound[0] - bound[1])  # stable: equal sizes stay longest first
            hold = []
            for start, stop in bounds:
                rows = order[start:stop]
                if not final and stop - start < batch_size and rows.min() >= held_count:
                    hold.append(rows)
                else:
                    yield indices[rows], tokens.padded(rows)
            waiting = None
            if hold:
                held = np.concatenate(hold)
                waiting = (indices[held], tokens.take(held))

    def _pooled_batches(
        self, host_batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], memory: BatchMemory | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices, pooled vectors). Batches are submitted as soon as they are embedded; the
        oldest is collected when it is done, or waited for once the encoder has `queued_tokens` of
        work after it, so the host tokenizes, embeds and pools while the encoder runs. Each batch's
        hidden states go back to `memory`, if given, once its output is pooled."""
        encoder, mode = self._encoder, self.manifest.pooling
        in_flight: deque[_InFlight] = deque()
        queued = 0  # padded tokens submitted after the oldest batch in flight

        def oldest_pooled() -> tuple[np.ndarray, np.ndarray]:
            oldest = in_flight.popleft()
            pooled = pool(oldest.pending.result(), oldest.mask, mode)
            if memory is not None:
                memory.give_back(oldest.hidden)
            return oldest.rows, pooled

        for rows, hidden, mask in host_batches:  # tokenizing and embedding here overlaps the encoder
            in_flight.append(_InFlight(rows, hidden, mask, encoder.submit(hidden, mask)))
            queued += mask.size if len(in_flight) > 1 else 0
            while len(in_flight) > 1 and (queued >= encoder.queued_tokens or in_flight[0].pending.done()):
                queued -= in_flight[1].mask.size  # the next oldest becomes the oldest: its tokens no longer count
                yield oldest_pooled()
        while in_flight:
            yield oldest_pooled()

    def close(self) -> None:
        """Release the encoder backend (the NPU models and device) and the batch memory kept
        between encode() calls. Safe to call twice. An encoder that is never closed releases its
        backend when it is garbage-collected, or at the latest when Python exits."""
        if self._encoder is not None:
            self._release_backend()  # closes the backend, once
            self._encoder = None
        self._batch_memory = None

    def __enter__(self) -> SentenceEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SentenceEncoder(model={self.manifest.source_model!r}, backend={self.backend!r}, "
            f"precision={self.precision!r}, dim={self.dim}, max_seq_length={self.max_seq_length})"
        )


def _close_in_process(pid: int, backend: EncoderBackend) -> None:
    """Close `backend` unless this is a process forked from the one that opened it: a child
    exiting must not dispose the parent's NPU models."""
    if os.getpid() == pid:
        backend.close()


def _chunks(count: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(first, last) text index of each tokenization chunk. The first is one batch, so the encoder
    starts soon; each next one is twice as large, up to _BATCHES_PER_CHUNK batches (large chunks
    give batches of equal lengths that fill up), so the encoder always has the previous chunk's
    batches to work on while the host tokenizes the next."""
    first, size = 0, batch_size
    while first < count:
        yield first, min(first + size, count)
        first += size
        size = min(2 * size, batch_size * _BATCHES_PER_CHUNK)


def _batch_bounds(
    lengths_longest_first: np.ndarray, batch_size: int, bucket: Callable[[int], int | None]
) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch over sentences sorted longest first: at most batch_size sentences,
    and only sentences of one bucket together (see EncoderBackend.batch_bucket)."""
    buckets = {length: bucket(length) for length in np.unique(lengths_longest_first).tolist()}
    keys = [buckets[length] for length in lengths_longest_first.tolist()]
    run_starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    for run_start, run_stop in zip(run_starts, run_starts[1:] + [len(keys)]):
        for start in range(run_start, run_stop, batch_size):
            yield start, min(start + batch_size, run_stop)


def _warn_if_truncated(truncated: list[int], total: int, max_seq_length: int) -> None:
    if truncated:
        logger.warning(
            "%d of %d texts were longer than %d tokens and were truncated (first at index %d); "
            "SentenceEncoder.tokenize() shows which",
            len(truncated),
            total,
            max_seq_length,
            min(truncated),
        )


def _wants_progress(show_progress_bar: bool | None) -> bool:
    if show_progress_bar is None:  # sentence-transformers' rule: show it when logging is verbose
        return logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    return show_progress_bar


def _progress(batches: Iterator[_Batch], total: int) -> Iterator[_Batch]:
    """Pass the batches through, counting their sentences on a tqdm bar (batches vary in size)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.warning("show_progress_bar needs tqdm: pip install tqdm")
        yield from batches
        return
    with tqdm(total=total, desc="Sentences", unit="sentence") as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch[0]))
