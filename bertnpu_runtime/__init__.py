"""bertnpu runtime: Sentence-BERT vectors with the embedding on the host and the encoder on a
Mobilint NPU (qbruntime) or ONNX Runtime. Lightweight: numpy and tokenizers, never torch.

    from bertnpu_runtime import SentenceEncoder
    with SentenceEncoder("bundles/all-MiniLM-L6-v2") as enc:
        vectors = enc.encode(["A man is playing a guitar.", "Someone plays an instrument."])
"""

from .encoder import SentenceEncoder
from .errors import (
    BackendUnavailableError,
    BertNpuError,
    BundleError,
    EncoderClosedError,
    EncoderOutputError,
    NpuTimeoutError,
)

__all__ = [
    "BackendUnavailableError",
    "BertNpuError",
    "BundleError",
    "EncoderClosedError",
    "EncoderOutputError",
    "NpuTimeoutError",
    "SentenceEncoder",
]
__version__ = "0.1.0"
