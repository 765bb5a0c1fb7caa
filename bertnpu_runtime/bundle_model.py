"""What SentenceEncoder and CrossEncoder share: opening a bundle's stages, and their lifetime.

A bundle is opened into one Pipeline (tokenizer -> host embedding -> encoder backend -> head): the
head is pooling for an embedding bundle and a classifier for a rerank bundle; everything before
it is the same for both. The backend (NPU models, ONNX sessions and their threads) belongs to the
object that opened it, in the process that opened it, and is released by close(), by `with`, or
by a finalizer when the object is dropped.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .backends.base import EncoderBackend, as_encoder_backend
from .backends.npu import NpuEncoder
from .backends.selection import open_backend
from .bundle import EMBEDDINGS_FILE, TOKENIZER_FILE, Bundle
from .embedding import EmbeddingLayer
from .errors import BundleError, EncoderClosedError
from .families import RUN_ON_A_CARD
from .heads import Head, PoolingHead
from .options import BackendOptions, NpuOptions, OnnxOptions, with_keywords
from .pipeline import HostBatch, Pipeline
from .tokenize import Tokenizer

Opened = TypeVar("Opened", bound="BundleModel")
logger = logging.getLogger("bertnpu")
# Each task's bundles, in words, and the class that opens them.
_OPENED_BY = {"embed": ("an embedding", "SentenceEncoder"), "rerank": ("a reranker", "CrossEncoder")}


class BundleModel:
    """A bundle opened for one task ("embed" or "rerank"); see SentenceEncoder and CrossEncoder
    for the arguments."""

    TASK = "embed"

    def __init__(
        self,
        bundle_dir: str | Path,
        backend: str | EncoderBackend = "auto",
        *,
        npu: NpuOptions | None = None,
        onnx: OnnxOptions | None = None,
        verify_bundle: bool = True,
        **settings: Any,
    ) -> None:
        kind = type(self).__name__
        options = BackendOptions(
            backend if isinstance(backend, str) else "auto", npu or NpuOptions(), onnx or OnnxOptions()
        )
        options = with_keywords(options, settings, kind)
        bundle = Bundle(bundle_dir, verify=verify_bundle)
        self.bundle_dir: Path = bundle.directory
        self.manifest = bundle.manifest
        if self.manifest.task != self.TASK:
            what, other = _OPENED_BY[self.manifest.task]
            raise BundleError(
                bundle.directory, f"is {what} bundle ({self.manifest.source_model}): open it with {other}"
            )
        tables = bundle.load_embeddings()
        tokenizer_path = bundle.path(TOKENIZER_FILE)
        self._tokenizer = Tokenizer(tokenizer_path, self.manifest.max_seq_length)
        if (largest := self._tokenizer.largest_id()) >= len(tables.word):
            raise BundleError(
                tokenizer_path,
                f"produces token ids up to {largest}, but {EMBEDDINGS_FILE} has {len(tables.word)} word "
                "embeddings: the tokenizer is from another model",
            )
        embedding = EmbeddingLayer(
            tables,
            self.manifest.max_seq_length,
            position_offset=self.manifest.position_offset,
            token_types=self.TASK == "rerank",
            reuse_tables=True,
        )
        head = self._open_head(bundle)
        self.backend_reason = "an open encoder backend was passed in"
        if isinstance(backend, str):
            backend, self.backend_reason = open_backend(bundle, options)
        encoder_backend = as_encoder_backend(backend)
        self.backend: str = encoder_backend.name
        if self.backend == "npu" and self.manifest.family not in RUN_ON_A_CARD:
            self.backend_reason += (
                f"; the {self.manifest.family} family's NPU graph has not been run on a card yet (see docs/npu.md)"
            )
        self._pipeline: Pipeline | None = Pipeline(self._tokenizer, embedding, encoder_backend, head)
        self._opened_in_pid = os.getpid()  # the backend's threads (and NPU models) live in this process only
        # An object dropped without close() still releases its backend: NPU cores held by a
        # forgotten encoder would refuse the next one in this process (Acc_CoreAlreadyInUse).
        self._release_backend = weakref.finalize(self, _close_in_process, self._opened_in_pid, encoder_backend)
        self.options = options

    def _open_head(self, bundle: Bundle) -> Head:
        manifest = bundle.manifest
        return PoolingHead(manifest.pooling, manifest.normalize, manifest.hidden_size)

    @classmethod
    def from_options(cls: type[Opened], bundle_dir: str | Path, options: BackendOptions, **keywords: Any) -> Opened:
        """This class on the backend `options` names, with its settings (what the CLI, the server
        and the Ray job build); `keywords` as the constructor's."""
        return cls(bundle_dir, options.backend, npu=options.npu, onnx=options.onnx, **keywords)

    @property
    def pipeline(self) -> Pipeline:
        """The stages this object runs (tokenizer, embedding, backend, head), for callers that
        drive them one by one: benchmarks, the server, the Ray job."""
        if self._pipeline is None:
            raise EncoderClosedError(f"this {type(self).__name__} is closed")
        return self._pipeline

    @property
    def max_seq_length(self) -> int:
        """Longer texts (pairs, for a cross-encoder) are truncated to this many tokens, special tokens included."""
        return self.manifest.max_seq_length

    @property
    def default_batch_size(self) -> int:
        """The batch_size used when none is given: 32 on ONNX (sentence-transformers' default), 64
        on the NPU, where a batch's sentences share one length and each call costs the host a
        thread wake-up."""
        return self.pipeline.backend.hints.preferred_batch_size

    @property
    def npu_cores_in_service(self) -> list[tuple[int, int]]:
        """The NPU cores still taking calls, as (cluster, core) pairs; a core whose calls keep
        failing is taken out of service. Empty when the encoder does not run on the NPU."""
        backend = self.pipeline.backend
        return backend.cores_in_service if isinstance(backend, NpuEncoder) else []

    def _usable_pipeline(self) -> Pipeline:
        """The pipeline, in the process that opened it (a forked child would wait forever on
        threads that do not exist there)."""
        pipeline = self.pipeline
        if os.getpid() != self._opened_in_pid:
            raise RuntimeError(
                f"this {type(self).__name__} was opened in process {self._opened_in_pid} and this is process "
                f"{os.getpid()}, forked from it: its threads and NPU models do not exist here. "
                f"Open a {type(self).__name__} in each worker process (or start workers with the 'spawn' method)"
            )
        return pipeline

    def close(self) -> None:
        """Release the encoder backend (the NPU models and device) and the batch memory kept
        between calls. Safe to call twice, and from another thread (its work in progress then
        raises EncoderClosedError). One never closed releases its backend when it is
        garbage-collected, or at the latest when Python exits."""
        if self._pipeline is not None:
            self._release_backend()  # closes the backend, once
            self._pipeline.release_memory()
            self._pipeline = None

    def __enter__(self: Opened) -> Opened:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close_in_process(pid: int, backend: EncoderBackend) -> None:
    """Close `backend` unless this is a process forked from the one that opened it: a child
    exiting must not dispose the parent's NPU models."""
    if os.getpid() == pid:
        backend.close()


def positive_integer(value: object, name: str) -> int:
    """An integer of any kind (int, numpy integers) that is at least 1, as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, found {value!r:.40}")
    return int(value)


def warn_if_truncated(truncated: list[int], total: int, max_seq_length: int) -> None:
    if truncated:
        logger.warning(
            "%d of %d texts were longer than %d tokens and were truncated (first at index %d); "
            "SentenceEncoder.tokenize() shows which",
            len(truncated),
            total,
            max_seq_length,
            min(truncated),
        )


def wants_progress(show_progress_bar: bool | None) -> bool:
    if show_progress_bar is None:  # sentence-transformers' rule: show it when logging is verbose
        return logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    return show_progress_bar


def progress_bar(batches: Iterator[HostBatch], total: int) -> Iterator[HostBatch]:
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
            bar.update(len(batch.rows))
