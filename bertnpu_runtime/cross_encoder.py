"""CrossEncoder: text pairs in, relevance scores out (rerankers), as sentence-transformers' CrossEncoder.

The pairs go through the same pipeline as SentenceEncoder's texts: tokenized together with the
model's pair template (token types 0/1 for BERT, </s></s> between the texts for RoBERTa), cut
longest text first to max_seq_length, embedded on the host, encoded on the NPU or ONNX Runtime;
the last stage is the model's classification head in NumPy (heads.py) instead of pooling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .bundle import Bundle
from .bundle_model import BundleModel, positive_integer, progress_bar, wants_progress, warn_if_truncated
from .heads import ACTIVATIONS, Head, activate
from .pipeline import TextPairs

logger = logging.getLogger("bertnpu")

Activation = str | Callable[[np.ndarray], np.ndarray]


class CrossEncoder(BundleModel):
    """Scores for text pairs from a reranker bundle (`python -m compile` of a BERT, RoBERTa or
    XLM-RoBERTa ...ForSequenceClassification model), with the encoder on a Mobilint NPU or ONNX
    Runtime. Arguments as SentenceEncoder's: `backend`, `npu=NpuOptions(...)`,
    `onnx=OnnxOptions(...)`, `verify_bundle`, and the same older keywords.

    `num_labels` is the classifier's output size; `activation_fn` the default activation of
    predict() ("sigmoid" for one label, "identity" otherwise, or what the model's config names).
    """

    TASK = "rerank"

    @property
    def num_labels(self) -> int:
        """The classifier's outputs per pair: 1 for a reranker's relevance score."""
        return int((self.manifest.head or {})["num_labels"])

    @property
    def activation_fn(self) -> str:
        """predict()'s default activation: "sigmoid" or "identity", as the model's files say."""
        return str((self.manifest.head or {})["activation"])

    def _open_head(self, bundle: Bundle) -> Head:
        return bundle.load_head()

    def predict(
        self,
        sentence_pairs: Sequence[Sequence[str]] | Sequence[str],
        batch_size: int | None = None,
        activation_fn: Activation | None = None,
        apply_softmax: bool = False,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Scores of the pairs, in input order: float32 [n] for a one-label model, [n, num_labels]
        otherwise; one pair (two strings) gives one score (or one row). `activation_fn` ("sigmoid",
        "identity", or a function of the logits array) replaces the model's default; with
        `apply_softmax` the scores of a multi-label model are softmaxed over labels.
        `batch_size` is the most pairs in one encoder call (None: `default_batch_size`)."""
        pipeline = self._usable_pipeline()
        single = _is_one_pair(sentence_pairs)
        pairs = _validated_pairs([sentence_pairs] if single else sentence_pairs)
        batch_size = self.default_batch_size if batch_size is None else positive_integer(batch_size, "batch_size")
        activation = self.activation_fn if activation_fn is None else activation_fn
        if isinstance(activation, str) and activation not in ACTIVATIONS:
            raise ValueError(f"activation_fn must be one of {ACTIVATIONS} or a function, found {activation!r:.40}")
        if not isinstance(apply_softmax, (bool, np.bool_)):
            raise TypeError(f"apply_softmax must be True or False, found {apply_softmax!r:.40}")
        progress = progress_bar if wants_progress(show_progress_bar) else None
        logits, truncated = pipeline.encode(pairs, batch_size, progress=progress)  # [n, num_labels]
        warn_if_truncated(truncated, len(pairs), self.max_seq_length)
        if isinstance(activation, str):
            scores = activate(logits, activation, bool(apply_softmax))
        else:
            scores = activate(np.asarray(activation(logits), dtype=np.float32), "identity", bool(apply_softmax))
        return scores[0] if single else scores

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int | None = None,
        activation_fn: Activation | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[dict[str, Any]]:
        """The documents by their score for `query`, best first, as sentence-transformers' rank:
        [{"corpus_id": index, "score": float, "text": document (with return_documents)}], the
        first `top_k` of them (None: all). Needs a one-label model."""
        if self.num_labels != 1:
            raise ValueError(
                f"rank() needs a model with one label; this one has {self.num_labels}: use predict() on the pairs"
            )
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, found {type(query).__name__}")
        if isinstance(documents, str) or not isinstance(documents, Sequence):
            raise TypeError(f"documents must be a sequence of str, found {type(documents).__name__}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative int or None, found {top_k!r:.40}")
        for index, document in enumerate(documents):
            if not isinstance(document, str):
                raise TypeError(f"documents[{index}] must be a str, found {type(document).__name__}")
        scores = self.predict(
            [(query, document) for document in documents],
            batch_size=batch_size,
            activation_fn=activation_fn,
            show_progress_bar=show_progress_bar,
        )
        results: list[dict[str, Any]] = []
        for index, score in enumerate(scores.tolist()):
            results.append({"corpus_id": index, "score": score})
            if return_documents:
                results[-1]["text"] = documents[index]
        results.sort(key=lambda result: result["score"], reverse=True)
        return results[:top_k]

    def __repr__(self) -> str:
        return (
            f"CrossEncoder(model={self.manifest.source_model!r}, family={self.manifest.family!r}, "
            f"backend={self.backend!r}, num_labels={self.num_labels}, max_seq_length={self.max_seq_length})"
        )


def _is_one_pair(pairs: object) -> bool:
    """Two strings (a list or tuple of them) are one pair, as sentence-transformers reads them."""
    return isinstance(pairs, (list, tuple)) and len(pairs) == 2 and all(isinstance(text, str) for text in pairs)


def _validated_pairs(pairs: object) -> TextPairs:
    """The pairs as (str, str) tuples, or an error naming the first that is not a pair of str."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"sentence_pairs must be a sequence of (str, str) pairs, found {type(pairs).__name__}")
    checked = TextPairs()
    for index, pair in enumerate(pairs):
        if (
            isinstance(pair, (str, bytes))
            or not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(text, str) for text in pair)
        ):
            raise TypeError(f"sentence_pairs[{index}] must be a pair of two str, found {pair!r:.60}")
        checked.append((pair[0], pair[1]))
    return checked
