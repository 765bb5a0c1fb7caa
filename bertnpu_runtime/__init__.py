"""bertnpu runtime: Sentence-BERT vectors with the embedding on the host and the encoder on a
Mobilint NPU (qbruntime) or ONNX Runtime. Lightweight: numpy and tokenizers, never torch.

    from bertnpu_runtime import SentenceEncoder
    with SentenceEncoder("bundles/all-MiniLM-L6-v2") as enc:
        vectors = enc.encode(["A man is playing a guitar.", "Someone plays an instrument."])

CrossEncoder scores text pairs with a reranker bundle the same way (predict, rank).
"""

from .cross_encoder import CrossEncoder
from .encoder import SentenceEncoder
from .errors import (
    BackendUnavailableError,
    BertNpuError,
    BundleError,
    EncoderClosedError,
    EncoderOutputError,
    NpuTimeoutError,
)
from .options import BackendOptions, NpuOptions, OnnxOptions

__all__ = [
    "BackendOptions",
    "BackendUnavailableError",
    "BertNpuError",
    "BundleError",
    "CrossEncoder",
    "EncoderClosedError",
    "EncoderOutputError",
    "NpuOptions",
    "NpuTimeoutError",
    "OnnxOptions",
    "SentenceEncoder",
]
__version__ = "0.1.0"
