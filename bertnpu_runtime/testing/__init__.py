"""Test doubles shipped with bertnpu, for running the NPU code path without a card.

from bertnpu_runtime.testing import FakeNpu
fake = FakeNpu(encoder_onnx_path="bundle/encoder.onnx")      # vectors equal to the ONNX backend's
fake = FakeNpu(hidden_size=384, latency_s=0.004)             # modelled latency, zeros out
SentenceEncoder("bundle", backend="npu", qbruntime_module=fake)
"""

from .bundles import bundle_with_placeholder_mxq
from .fake_qbruntime import FakeNpu, InferCall

__all__ = ["FakeNpu", "InferCall", "bundle_with_placeholder_mxq"]
