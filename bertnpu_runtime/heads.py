"""The last stage, pure NumPy: the encoder's token outputs to one row per text.

An embedding model pools them (pooling.py) into a sentence vector. A cross-encoder (reranker)
reads the first token ([CLS] or <s>) through a dense layer, tanh and an output layer: BERT's pooler
and classifier (BertForSequenceClassification) and RoBERTa's classification head
(XLMRobertaForSequenceClassification: dense, tanh, out_proj) are the same arithmetic, so one
ClassifierHead serves both with the weights compile writes to head.npz.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .pooling import l2_normalize, pool

ACTIVATIONS = ("sigmoid", "identity")
HEAD_KEYS = ("dense_weight", "dense_bias", "out_weight", "out_bias")


class Head(Protocol):
    """output float32 [batch, seq, hidden] and mask int [batch, seq] -> float32 [batch, dim]."""

    @property
    def dim(self) -> int: ...

    @property
    def normalizes(self) -> bool:
        """Whether its rows are unit vectors."""
        ...

    def __call__(self, output: np.ndarray, mask: np.ndarray, skip_tokens: int = 0) -> np.ndarray: ...


@dataclass(frozen=True)
class PoolingHead:
    """A sentence vector: the token outputs pooled by `mode` (without the first `skip_tokens`, a
    prompt), L2-normalized where the model ends in a Normalize module."""

    mode: str
    normalizes: bool
    dim: int

    def __call__(self, output: np.ndarray, mask: np.ndarray, skip_tokens: int = 0) -> np.ndarray:
        pooled = pool(output, mask, self.mode, skip_tokens)  # [batch, hidden]
        return l2_normalize(pooled) if self.normalizes else pooled


@dataclass(frozen=True)
class ClassifierHead:
    """A cross-encoder's logits: out(tanh(dense(first token))). Weights as torch.nn.Linear keeps
    them: dense [hidden, hidden] and out [num_labels, hidden], each [out features, in features]."""

    dense_weight: np.ndarray
    dense_bias: np.ndarray
    out_weight: np.ndarray
    out_bias: np.ndarray
    normalizes = False

    @property
    def dim(self) -> int:
        """num_labels: one score per text pair, or one logit per label."""
        return int(self.out_weight.shape[0])

    def __call__(self, output: np.ndarray, mask: np.ndarray, skip_tokens: int = 0) -> np.ndarray:
        first = output[:, 0]  # [batch, hidden]: [CLS] / <s>, always a real token
        pooled = np.tanh(first @ self.dense_weight.T + self.dense_bias)  # [batch, hidden]
        return (pooled @ self.out_weight.T + self.out_bias).astype(np.float32)  # [batch, num_labels]


def activate(logits: np.ndarray, activation: str, apply_softmax: bool = False) -> np.ndarray:
    """Scores from logits [n, num_labels], as sentence-transformers' CrossEncoder.predict makes
    them: the activation ("sigmoid" or "identity"), then a softmax over labels when asked (and
    there is more than one); a single label gives [n]."""
    if activation == "sigmoid":
        logits = 1.0 / (1.0 + np.exp(-logits))
    elif activation != "identity":
        raise ValueError(f"activation must be one of {ACTIVATIONS}, found {activation!r:.40}")
    if apply_softmax and logits.shape[1] > 1:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        logits = shifted / shifted.sum(axis=1, keepdims=True)
    scores = logits[:, 0] if logits.shape[1] == 1 else logits
    return np.ascontiguousarray(scores, dtype=np.float32)


def check_head(head: Any) -> str | None:
    """bundle.json's "head" of a rerank bundle: {"num_labels": n >= 1, "activation": one of
    ACTIVATIONS}. None when it is fine, else what is wrong."""
    if type(head) is not dict:
        return f"must be a JSON object, found {head!r:.60}"
    labels = head.get("num_labels")
    if type(labels) is not int or not 1 <= labels <= 1 << 16:
        return f"num_labels must be an integer from 1, found {labels!r:.40}"
    if head.get("activation") not in ACTIVATIONS:
        return f"activation must be one of {list(ACTIVATIONS)}, found {head.get('activation')!r:.40}"
    return None
