"""The pipeline: tokenize -> embed (host) -> encoder (NPU or ONNX) -> pool -> normalize.

The host stages of later batches overlap the encoder's work on earlier ones: each batch is
submitted as soon as it is embedded, and collected when it is done or once enough work is queued
behind it. This is the public stage API that SentenceEncoder, the benchmarks, the server and the
Ray job call; each stage is also callable alone (`token_batches`, `embed`, `pool`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from typing import NamedTuple

import numpy as np

from .backends.base import EncoderBackend, PendingOutput
from .batch_memory import BatchMemory
from .batching import chunk_bounds, plan_chunk
from .embedding import EmbeddingLayer
from .errors import EncoderOutputError
from .heads import Head
from .pooling import truncate_and_normalize
from .tokenize import TokenizedBatch, Tokenizer, TokenRows

# An encode()'s batch memory (see batch_memory.py) is kept for the next one up to this size (64 MiB).
KEPT_BATCH_MEMORY_BYTES = 64 << 20


class TokenBatch(NamedTuple):
    """One planned batch of token ids."""

    rows: np.ndarray  # int [batch]: the index of each sentence's text
    tokens: TokenizedBatch
    alone: bool  # the call's only batch


class HostBatch(NamedTuple):
    """One batch as the host hands it to the encoder."""

    rows: np.ndarray  # int [batch]: the index of each sentence's text
    hidden: np.ndarray  # float32 [batch, seq, hidden]: embedding + LayerNorm output
    mask: np.ndarray  # int64 [batch, seq]: 1 = real token
    alone: bool = False  # the call's only batch: no other joins the encoder before it is done


class Encoded(NamedTuple):
    """What `Pipeline.encode` returns."""

    vectors: np.ndarray  # float32 [texts, dim], in text order
    truncated: list[int]  # indices of the texts cut at max_seq_length tokens


Progress = Callable[[Iterator[HostBatch], int], Iterator[HostBatch]]  # (batches, texts) -> the same batches


class TextPairs(list[tuple[str, str]]):
    """Text pairs, a cross-encoder's input (a list of its own type, so stages can tell it from texts)."""


Texts = list[str] | TextPairs | TokenRows  # texts, text pairs, or their token rows


class _InFlight(NamedTuple):
    """A batch submitted to the encoder and not yet collected."""

    batch: HostBatch  # its hidden states are read by the encoder until its output is ready
    pending: PendingOutput


class Pipeline:
    """Texts to one row each (sentence vectors, or a cross-encoder's logits) through one tokenizer,
    embedding layer, encoder backend and head.

    Args:
        tokenizer, embedding, backend: the stages; the backend stays its owner's to close.
        head: the last stage (heads.py): pooling into sentence vectors, or a classifier.
    """

    def __init__(self, tokenizer: Tokenizer, embedding: EmbeddingLayer, backend: EncoderBackend, head: Head) -> None:
        self.tokenizer = tokenizer
        self.embedding = embedding
        self.backend = backend
        self.head = head
        self._batch_memory: BatchMemory | None = None  # the last encode()'s, for the next
        self._batch_memory_lock = threading.Lock()

    @property
    def dim(self) -> int:
        """The length of each output row: the vector size, or a classifier's number of labels."""
        return self.head.dim

    def encode(
        self,
        texts: Texts,
        batch_size: int,
        *,
        truncate_dim: int | None = None,
        normalize: bool = False,
        progress: Progress | None = None,
        skip_tokens: int = 0,
    ) -> Encoded:
        """Vectors of already-validated texts (or their token rows, tokenized once by the caller),
        at most `batch_size` per encoder call: pooled without the first `skip_tokens` tokens (a
        prompt), normalized where the model is, then cut to `truncate_dim` and normalized when
        `normalize` (truncate_and_normalize). `progress` wraps the batches, if given: a progress
        bar, or a server's count of encoder batches. Token rows tell the backend the call's size,
        so that a backend several callers share may run small calls' batches first."""
        vectors = np.empty((len(texts), truncate_dim or self.dim), dtype=np.float32)
        truncated: list[int] = []
        memory = self._take_batch_memory()
        batches = self.host_batches(texts, batch_size, truncated, memory)
        if progress is not None:
            batches = progress(batches, len(texts))
        pooled = self.pooled_batches(
            batches,
            memory,
            truncate_dim=truncate_dim,
            normalize=normalize,
            skip_tokens=skip_tokens,
            call_tokens=int(texts.lengths.sum()) if isinstance(texts, TokenRows) else None,
        )
        with closing(pooled):  # on an error or an interrupt, closing withdraws the batches still queued
            for rows, batch_vectors in pooled:
                vectors[rows] = batch_vectors  # batch by batch, while the encoder runs later ones
        self._keep_batch_memory(memory)  # not after an error: its batches may still be on the encoder
        return Encoded(vectors, truncated)

    def token_batches(self, texts: Texts, batch_size: int, truncated: list[int]) -> Iterator[TokenBatch]:
        """Yield each batch's text indices and padded token ids, as batching.py plans them; the
        indices of truncated texts are appended to `truncated`. Texts are tokenized a chunk at a
        time, as the batches are needed; token rows are taken as they are."""
        hints = self.backend.hints
        bucket = hints.bucket or _one_bucket
        carried_indices, carried = np.empty(0, dtype=np.intp), TokenRows.empty()  # held back by the last chunk
        for first, last in chunk_bounds(len(texts), batch_size):
            tokens = self._tokenized(texts, first, last)
            truncated.extend((first + np.flatnonzero(tokens.truncated)).tolist())
            indices = np.concatenate([carried_indices, np.arange(first, last)])  # the text of each row
            tokens = TokenRows.concatenate([carried, tokens]) if len(carried) else tokens
            plan = plan_chunk(
                tokens.lengths,
                batch_size,
                bucket,
                carried=len(carried),
                final=last == len(texts),
                call_cost_tokens=hints.call_cost_tokens,
                batch_tokens=hints.batch_tokens,
            )
            alone = first == 0 and last == len(texts) and len(plan.batches) == 1
            for rows in plan.batches:
                yield TokenBatch(indices[rows], tokens.padded(rows), alone)
            carried_indices, carried = indices[plan.held], tokens.take(plan.held)

    def _tokenized(self, texts: Texts, first: int, last: int) -> TokenRows:
        """The token rows of texts first..last-1."""
        if isinstance(texts, TokenRows):
            return texts.slice(first, last)
        if isinstance(texts, TextPairs):
            return self.tokenizer.encode_pairs(texts[first:last])
        return self.tokenizer.encode_unpadded(texts[first:last])

    def embed(self, tokens: TokenizedBatch, out: np.ndarray | None = None) -> np.ndarray:
        """float32 [batch, seq, hidden]: the embedding + LayerNorm of a padded batch (into `out` if given)."""
        return self.embedding(tokens.input_ids, out, tokens.token_type_ids)

    def host_batches(
        self, texts: Texts, batch_size: int, truncated: list[int], memory: BatchMemory | None = None
    ) -> Iterator[HostBatch]:
        """token_batches, embedded. The hidden states are taken from `memory` when given (the
        consumer gives them back), else fresh arrays."""
        for rows, tokens, alone in self.token_batches(texts, batch_size, truncated):
            out = None if memory is None else memory.take((*tokens.input_ids.shape, self.embedding.hidden_size))
            yield HostBatch(rows, self.embed(tokens, out), tokens.attention_mask, alone)

    def pool(
        self,
        output: np.ndarray,
        mask: np.ndarray,
        *,
        truncate_dim: int | None = None,
        normalize: bool = False,
        skip_tokens: int = 0,
    ) -> np.ndarray:
        """float32 [batch, truncate_dim or dim]: the head's rows (pooled without the first
        `skip_tokens` tokens, and L2-normalized where the model normalizes), then cut to
        `truncate_dim` and L2-normalized when `normalize`."""
        rows = self.head(output, mask, skip_tokens)
        if self.head.normalizes:
            normalize = normalize and truncate_dim is not None  # a unit vector stays one unless it is cut
        return truncate_and_normalize(rows, truncate_dim, normalize)

    def pooled_batches(
        self,
        host_batches: Iterable[HostBatch],
        memory: BatchMemory | None = None,
        *,
        truncate_dim: int | None = None,
        normalize: bool = False,
        skip_tokens: int = 0,
        call_tokens: int | None = None,
    ) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
        """Yield (text indices, vectors) per batch. Batches are submitted as soon as they are
        embedded; the oldest is collected when it is done, or waited for once the encoder has
        `hints.queued_tokens` of work after it, so the host tokenizes, embeds and pools while the
        encoder runs. Each batch's hidden states go back to `memory`, if given, once it is pooled.
        When this stops early (an error, an interrupt, the generator closed), the batches still in
        flight are cancelled: what has not reached the encoder never will. `call_tokens`: the
        whole call's tokens, when known, for the backend (EncoderBackend.submit)."""
        backend = self.backend
        budget = backend.hints.queued_tokens
        in_flight: deque[_InFlight] = deque()
        queued = 0  # padded tokens submitted after the oldest batch in flight

        def oldest_pooled() -> tuple[np.ndarray, np.ndarray]:
            batch, pending = in_flight.popleft()
            vectors = self.pool(
                pending.result(), batch.mask, truncate_dim=truncate_dim, normalize=normalize, skip_tokens=skip_tokens
            )
            _check_finite(backend.name, batch.rows, np.isfinite(vectors).all(axis=1))
            if memory is not None:
                memory.give_back(batch.hidden)
            return batch.rows, vectors

        try:
            for batch in host_batches:  # tokenizing and embedding here overlaps the encoder
                in_flight.append(_InFlight(batch, self.submit(batch, call_tokens)))
                queued += batch.mask.size if len(in_flight) > 1 else 0
                while len(in_flight) > 1 and (queued >= budget or in_flight[0].pending.done()):
                    queued -= in_flight[
                        1
                    ].batch.mask.size  # the next oldest becomes the oldest: its tokens no longer count
                    yield oldest_pooled()
            while in_flight:
                yield oldest_pooled()
        finally:
            for _, pending in in_flight:  # empty unless this stopped early
                pending.cancel()

    def token_embeddings(
        self, texts: list[str], batch_size: int, *, progress: Progress | None = None
    ) -> tuple[list[np.ndarray], list[int]]:
        """Each text's encoder output, float32 [its tokens, dim] (no pooling), and the indices of
        the truncated texts."""
        truncated: list[int] = []
        rows: list[np.ndarray | None] = [None] * len(texts)
        batches = self.host_batches(texts, batch_size, truncated)
        if progress is not None:
            batches = progress(batches, len(texts))
        for batch in batches:
            output = self.submit(batch._replace(alone=True)).result()  # one at a time
            real = batch.mask.astype(bool)[:, :, None]
            _check_finite(self.backend.name, batch.rows, (np.isfinite(output) | ~real).all(axis=(1, 2)))
            for row, text_index in enumerate(batch.rows.tolist()):
                rows[text_index] = np.array(output[row, : int(batch.mask[row].sum())], dtype=np.float32)
        return rows, truncated  # type: ignore[return-value]

    def submit(self, batch: HostBatch, call_tokens: int | None = None) -> PendingOutput:
        """Hand the batch to the encoder backend (`call_tokens`: its call's, when known)."""
        return self.backend.submit(batch.hidden, batch.mask, alone=batch.alone, call_tokens=call_tokens)

    @property
    def kept_batch_memory_bytes(self) -> int:
        """Bytes of batch memory kept for the next encode() (0 before the first, after a failed
        one, or after release_memory())."""
        memory = self._batch_memory
        return 0 if memory is None else memory.nbytes

    def release_memory(self) -> None:
        """Drop the batch memory kept between encode() calls."""
        self._batch_memory = None

    def _take_batch_memory(self) -> BatchMemory:
        """The last encode()'s batch memory, or new memory while another encode() holds it."""
        with self._batch_memory_lock:
            memory, self._batch_memory = self._batch_memory, None
        return memory or BatchMemory()

    def _keep_batch_memory(self, memory: BatchMemory) -> None:
        if memory.nbytes <= KEPT_BATCH_MEMORY_BYTES:
            with self._batch_memory_lock:
                self._batch_memory = memory


def _check_finite(backend: str, rows: np.ndarray, finite: np.ndarray) -> None:
    """Raise EncoderOutputError naming the texts (`rows`) whose output is not `finite` [batch]."""
    if finite.all():
        return
    bad = rows[~finite]
    raise EncoderOutputError(
        f"the {backend} encoder returned NaN or infinite values for {len(bad)} text(s), first at index {bad[0]} "
        f"(indices {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}): the model or its compiled graph is broken"
    )


def _one_bucket(length: int) -> None:
    """Any lengths may share a batch."""
    return None
