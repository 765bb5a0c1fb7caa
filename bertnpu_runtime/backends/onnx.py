"""ONNX Runtime encoder backend (CPU): runs the bundle's encoder.onnx on padded batches."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..bundle import ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT, ONNX_OUTPUT
from ..errors import BackendUnavailableError, BundleError
from .base import BackendHints


def check_num_threads(num_threads: object) -> None:
    """None, or a positive int (not a bool, a float or a string)."""
    if num_threads is not None and (type(num_threads) is not int or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, found {num_threads!r:.40}")


class OnnxEncoder:
    """The encoder on ONNX Runtime's CPU provider. Thread-safe: ORT sessions allow concurrent `run`.

    `submit` runs batches one at a time on a thread of this encoder's own: ONNX Runtime already uses
    every core it is given for one batch, so one batch in flight is enough to overlap the host's work.
    """

    name = "onnx"

    def __init__(self, model_path: str | Path, num_threads: int | None = None, hidden_size: int | None = None) -> None:
        """num_threads: ONNX Runtime's intra-op threads (None: its own choice, every core).
        hidden_size: the width the graph's hidden states must have (bundle.json's), checked at load."""
        check_num_threads(num_threads)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                "the onnx backend needs onnxruntime: pip install 'bertnpu[onnx]'"
            ) from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise BundleError(model_path, f"ONNX Runtime cannot load it ({exc})") from exc
        input_names = {i.name for i in self._session.get_inputs()}
        if input_names != {ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT}:
            raise BundleError(
                model_path, f"expected inputs {ONNX_HIDDEN_INPUT!r} and {ONNX_MASK_INPUT!r}, found {sorted(input_names)}"
            )
        if hidden_size is not None:
            _check_width(model_path, self._session, hidden_size)
        width = hidden_size if hidden_size is not None else _graph_width(self._session)
        # One batch waits while another runs; any lengths share a batch, cut where padding costs more than a call.
        self.hints = BackendHints(queued_tokens=1, call_cost_tokens=call_cost_tokens(width))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertnpu-onnx")

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """hidden float32 [batch, seq, hidden], attention_mask int64 [batch, seq] -> float32 [batch, seq, hidden]."""
        (output,) = self._session.run([ONNX_OUTPUT], {ONNX_HIDDEN_INPUT: hidden, ONNX_MASK_INPUT: attention_mask})
        return output

    def submit(self, hidden: np.ndarray, attention_mask: np.ndarray) -> Future:
        """Run the batch on this encoder's worker thread; the Future's `result()` is run()'s output."""
        if self._session is None:
            raise RuntimeError("OnnxEncoder.submit() called after close()")
        return self._worker.submit(self.run, hidden, attention_mask)

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._session = None


def call_cost_tokens(hidden_size: int | None) -> float:
    """What one more ONNX Runtime call costs, in tokens' worth of encoder work. Measured for
    all-MiniLM-L6-v2 on 2 threads: 1.7 ms a call against 89 us a token, about 20 tokens. A call's
    fixed cost grows with the layers and a token's work with the layers times hidden_size squared,
    so the ratio scales as (384 / hidden_size) squared."""
    return 20.0 * (384 / (hidden_size or 384)) ** 2


def _graph_width(session: object) -> int | None:
    """The hidden-state input's width, where the graph fixes it."""
    shape = next(i for i in session.get_inputs() if i.name == ONNX_HIDDEN_INPUT).shape or [None]
    return shape[-1] if isinstance(shape[-1], int) else None


def _check_width(model_path: str | Path, session: object, hidden_size: int) -> None:
    """The graph's hidden-state input and output end in hidden_size where their shapes say so."""
    hidden_input = next(i for i in session.get_inputs() if i.name == ONNX_HIDDEN_INPUT)
    outputs = {o.name: o for o in session.get_outputs()}
    if ONNX_OUTPUT not in outputs:
        raise BundleError(model_path, f"expected an output {ONNX_OUTPUT!r}, found {sorted(outputs)}")
    for what, shape in ((f"input {ONNX_HIDDEN_INPUT!r}", hidden_input.shape), (f"output {ONNX_OUTPUT!r}", outputs[ONNX_OUTPUT].shape)):
        width = shape[-1] if shape else None
        if len(shape or ()) != 3 or (isinstance(width, int) and width != hidden_size):
            raise BundleError(
                model_path, f"{what} has shape {shape}; expected [batch, seq, {hidden_size}] (bundle.json's hidden_size)"
            )
