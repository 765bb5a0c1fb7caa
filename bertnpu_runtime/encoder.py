"""SentenceEncoder: texts in, sentence vectors out.

It opens a bundle's stages (tokenizer, embedding tables, encoder backend), checks its arguments,
and hands the texts to the pipeline (pipeline.py), which runs tokenize -> embed -> encoder -> pool
-> normalize with the host's work overlapping the encoder's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from .backends.base import EncoderBackend
from .bundle_model import BundleModel, positive_integer, progress_bar, wants_progress, warn_if_truncated
from .options import NpuOptions, OnnxOptions
from .quantization import check_precision, quantize_embeddings
from .similarity import similarity
from .tokenize import TokenizedBatch, validate_texts

logger = logging.getLogger("bertnpu")

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings")
Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]


class SentenceEncoder(BundleModel):
    """Sentence vectors from a bertnpu bundle, with the encoder on a Mobilint NPU or ONNX Runtime.

    Args:
        bundle_dir: a folder written by `python -m compile`.
        backend: "auto" (NPU when a device and a model.mxq are present, else ONNX), "npu" or "onnx";
            or an already-open EncoderBackend (for example an OnnxEncoder on another graph; an
            object with just `run(hidden, attention_mask)` works too, run one batch at a time),
            which the SentenceEncoder then owns and closes.
        npu: NpuOptions (device, core mode, cores, timeout, trace, ...) for the NPU backend.
        onnx: OnnxOptions (precision "float32", or "int8" for the bundle's encoder.int8.onnx; threads).
        truncate_dim: keep the first this many dimensions of every vector (Matryoshka models);
            encode()'s truncate_dim overrides it.
        verify_bundle: check every file used against its SHA-256 in bundle.json.
        **settings: the keywords of earlier versions, each filling one option: encoder_precision,
            num_threads (OnnxOptions); device_no, npu_device_name, npu_core_mode, npu_cores,
            npu_group_sentences, npu_trace_path, npu_timeout_s, qbruntime_module (NpuOptions).
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        backend: str | EncoderBackend = "auto",
        *,
        npu: NpuOptions | None = None,
        onnx: OnnxOptions | None = None,
        truncate_dim: int | None = None,
        verify_bundle: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(bundle_dir, backend, npu=npu, onnx=onnx, verify_bundle=verify_bundle, **settings)
        self.encoder_precision = self.options.onnx.precision
        self.truncate_dim = self._checked_truncate_dim(truncate_dim)
        self.similarity_fn_name: str = self.manifest.similarity_fn_name
        self.prompts: dict[str, str] = dict(self.manifest.prompts)
        self.default_prompt_name: str | None = self.manifest.default_prompt_name

    @property
    def dim(self) -> int:
        """Length of each sentence vector."""
        return self.manifest.hidden_size

    def tokenize(self, texts: str | Sequence[str]) -> TokenizedBatch:
        """Token ids exactly as encode() sees them; `.truncated` tells which texts were cut."""
        return self._tokenizer.encode(validate_texts([texts] if isinstance(texts, str) else texts))

    @overload
    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int | None = ...,
        show_progress_bar: bool | None = ...,
        output_value: Literal["sentence_embedding"] = ...,
        precision: Precision = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
    ) -> np.ndarray: ...

    @overload
    def encode(  # type: ignore[overload-overlap]  # a str is a Sequence[str] too; this, the first match, wins
        self,
        sentences: str,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int | None = ...,
        show_progress_bar: bool | None = ...,
        output_value: Literal["token_embeddings"] = ...,
        precision: Precision = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
    ) -> np.ndarray: ...

    @overload
    def encode(
        self,
        sentences: Sequence[str],
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int | None = ...,
        show_progress_bar: bool | None = ...,
        output_value: Literal["token_embeddings"] = ...,
        precision: Precision = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
    ) -> list[np.ndarray]: ...

    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        output_value: str = "sentence_embedding",
        precision: str = "float32",
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Encode sentences to vectors, as sentence-transformers' `encode` does.

        Returns [n, dim] for a list (in input order; [0, dim] for an empty list) and [dim] for a
        single str. `prompt_name` picks one of the model's `prompts` (`prompt` gives the text
        itself; without either, the model's default prompt, if any, is used); the prompt is put
        before every text and, where the model's pooling excludes prompts, left out of the pooling.
        `batch_size` is the most sentences in one encoder call (None: `default_batch_size`).
        Vectors come as the model makes them (L2-normalized if it ends in Normalize), cut to
        `truncate_dim` dimensions, then L2-normalized when `normalize_embeddings`, then quantized
        to `precision` ("float32", "int8", "uint8", "binary", "ubinary"; see quantization.py).
        `output_value="token_embeddings"` returns each text's [tokens, dim] encoder output instead.
        Texts over `max_seq_length` tokens are truncated and a warning is logged.
        """
        pipeline = self._usable_pipeline()
        batch_size = self.default_batch_size if batch_size is None else positive_integer(batch_size, "batch_size")
        if not isinstance(normalize_embeddings, (bool, np.bool_)):
            raise TypeError(f"normalize_embeddings must be True or False, found {normalize_embeddings!r:.40}")
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, found {output_value!r:.40}")
        check_precision(precision)
        truncate_dim = self.truncate_dim if truncate_dim is None else self._checked_truncate_dim(truncate_dim)
        single = isinstance(sentences, str)
        texts = validate_texts([sentences] if isinstance(sentences, str) else sentences)
        prompt = self._prompt(prompt_name, prompt)
        skip_tokens = 0
        if prompt:
            texts = [prompt + text for text in texts]
            if not self.manifest.include_prompt:  # [CLS] and the prompt's tokens, as sentence-transformers counts them
                skip_tokens = int(self._tokenizer.encode_unpadded([prompt]).lengths[0]) - 1
        progress = progress_bar if wants_progress(show_progress_bar) else None
        if output_value == "token_embeddings":
            rows, truncated = pipeline.token_embeddings(texts, batch_size, progress=progress)
            warn_if_truncated(truncated, len(texts), self.max_seq_length)
            return rows[0] if single else rows
        vectors, truncated = pipeline.encode(
            texts,
            batch_size,
            truncate_dim=truncate_dim,
            normalize=bool(normalize_embeddings),
            progress=progress,
            skip_tokens=skip_tokens,
        )
        warn_if_truncated(truncated, len(texts), self.max_seq_length)
        vectors = quantize_embeddings(vectors, precision)
        return vectors[0] if single else vectors

    def encode_query(self, sentences: str | Sequence[str], **options: Any) -> np.ndarray:
        """encode() with the model's "query" prompt, when it has one (sentence-transformers' encode_query)."""
        return self.encode(sentences, **self._task_prompt("query", options))

    def encode_document(self, sentences: str | Sequence[str], **options: Any) -> np.ndarray:
        """encode() with the model's "document" prompt ("passage" or "corpus" where that is its name)."""
        return self.encode(sentences, **self._task_prompt("document", options))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """[n, m] scores between the rows of `a` and `b` by `similarity_fn_name` (cosine, dot,
        euclidean or manhattan; the distances negated, so that higher is more similar), as
        sentence-transformers' `similarity`."""
        return similarity(a, b, self.similarity_fn_name)

    def _task_prompt(self, task: str, options: dict[str, Any]) -> dict[str, Any]:
        if options.get("prompt_name") is None and options.get("prompt") is None:
            names = {"query": ("query",), "document": ("document", "passage", "corpus")}[task]
            name = next((n for n in names if n in self.prompts), None)
            if name is not None:
                options = {**options, "prompt_name": name}
        return options

    def _prompt(self, prompt_name: str | None, prompt: str | None) -> str | None:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str, found {type(prompt).__name__}")
            if prompt_name is not None:
                logger.warning(
                    "encode() got both prompt and prompt_name; the prompt is used, as in sentence-transformers"
                )
            return prompt
        if prompt_name is not None:
            if not isinstance(prompt_name, str):
                raise TypeError(f"prompt_name must be a str, found {type(prompt_name).__name__}")
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"prompt_name {prompt_name!r} is not one of this model's prompts: {sorted(self.prompts) or 'none'}"
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    def _checked_truncate_dim(self, truncate_dim: int | None) -> int | None:
        if truncate_dim is None:
            return None
        truncate_dim = positive_integer(truncate_dim, "truncate_dim")
        if truncate_dim > self.dim:
            raise ValueError(f"truncate_dim {truncate_dim} is larger than this model's {self.dim} dimensions")
        return truncate_dim

    def __repr__(self) -> str:
        return (
            f"SentenceEncoder(model={self.manifest.source_model!r}, backend={self.backend!r}, "
            f"encoder_precision={self.encoder_precision!r}, dim={self.dim}, max_seq_length={self.max_seq_length})"
        )
