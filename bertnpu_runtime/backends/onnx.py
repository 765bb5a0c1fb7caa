"""ONNX Runtime encoder backend (CPU): runs the bundle's encoder.onnx on padded batches."""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..bundle import ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT, ONNX_OUTPUT
from ..errors import BackendUnavailableError, BundleError
from .base import BackendHints

# Padded tokens queued per lane beyond the batch the pipeline waits for: a batch or two of
# STS-B-length sentences, so that a lane that finishes finds the next batch ready.
LANE_QUEUED_TOKENS = 2048


def check_num_threads(num_threads: object, name: str = "num_threads") -> None:
    """None, or a positive int (not a bool, a float or a string)."""
    if num_threads is not None and (type(num_threads) is not int or num_threads < 1):
        raise ValueError(f"{name} must be a positive int or None, found {num_threads!r:.40}")


class OnnxEncoder:
    """The encoder on ONNX Runtime's CPU provider. Thread-safe: ORT sessions allow concurrent `run`.

    `submit` runs batches on threads of this encoder's own. An encode() call's only batch runs on
    every thread (a session of `num_threads` intra-op threads). The batches of a longer call run
    `lanes` at a time, each on one thread (a second, single-threaded session): single-threaded runs
    never wait for each other between operators, and on two cores two of them encode 1.1-1.3x the
    sentences of one two-threaded run. `run` always uses every thread.
    """

    name = "onnx"

    def __init__(
        self,
        model_path: str | Path,
        num_threads: int | None = None,
        hidden_size: int | None = None,
        lanes: int | None = None,
    ) -> None:
        """num_threads: ONNX Runtime's intra-op threads (None: its own choice, every core).
        hidden_size: the width the graph's hidden states must have (bundle.json's), checked at load.
        lanes: batches of one call run at once, one thread each (None: num_threads, else this
        process's cores; 1: one batch at a time on every thread, and no second session in memory)."""
        check_num_threads(num_threads)
        check_num_threads(lanes, "lanes")
        self._session = _open_session(model_path, num_threads)
        input_names = {i.name for i in self._session.get_inputs()}
        if input_names != {ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT}:
            raise BundleError(
                model_path,
                f"expected inputs {ONNX_HIDDEN_INPUT!r} and {ONNX_MASK_INPUT!r}, found {sorted(input_names)}",
            )
        if hidden_size is not None:
            _check_width(model_path, self._session, hidden_size)
        width = hidden_size if hidden_size is not None else _graph_width(self._session)
        self.lanes = lanes if lanes is not None else (num_threads or _usable_cores())
        self._lane_session = _open_session(model_path, 1) if self.lanes > 1 else None
        # Enough queued for every lane; any lengths share a batch, cut where padding costs more than a call.
        queued = LANE_QUEUED_TOKENS * self.lanes if self.lanes > 1 else 1
        self.hints = BackendHints(queued_tokens=queued, call_cost_tokens=call_cost_tokens(width), takes_alone=True)
        # Whole-machine runs keep a thread of their own: ORT runs one called from changing threads
        # 15-35% slower (one-sentence encode() on two cores).
        self._whole_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertnpu-onnx")
        self._lane_workers = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="bertnpu-onnx-lane")
        self._state = threading.Condition()
        self._waiting: deque[_Waiting] = deque()
        self._running_whole = False
        self._running_in_lanes = 0

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """hidden float32 [batch, seq, hidden], attention_mask int64 [batch, seq] -> float32 [batch, seq, hidden]."""
        return _run(self._session, hidden, attention_mask)

    def submit(self, hidden: np.ndarray, attention_mask: np.ndarray, alone: bool = False) -> Future:
        """Queue the batch for this encoder's threads; the Future's `result()` is run()'s output.
        alone: the batch is its call's only one: it gets every thread if nothing else is queued or
        running (else it takes a lane, as concurrent encode() calls' batches do)."""
        future: Future = Future()
        with self._state:
            if self._session is None:
                raise RuntimeError("OnnxEncoder.submit() called after close()")
            whole = self._lane_session is None or (alone and self._idle())
            self._waiting.append(_Waiting(hidden, attention_mask, whole, future))
            self._start_waiting()
        return future

    def _idle(self) -> bool:
        """Nothing queued or running (holding self._state)."""
        return not (self._waiting or self._running_whole or self._running_in_lanes)

    def _start_waiting(self) -> None:
        """Start waiting batches in order, while they may (holding self._state): a whole-machine
        run only with nothing else running, lane runs up to `lanes` at once."""
        while self._waiting and not self._running_whole:
            whole = self._waiting[0].whole
            if (whole and self._running_in_lanes) or self._running_in_lanes == self.lanes:
                return
            batch = self._waiting.popleft()
            if whole:
                self._running_whole = True
                self._whole_worker.submit(self._run_waiting, self._session, batch)
            else:
                self._running_in_lanes += 1
                self._lane_workers.submit(self._run_waiting, self._lane_session, batch)

    def _run_waiting(self, session: object, batch: _Waiting) -> None:
        try:
            output, error = _run(session, batch.hidden, batch.mask), None
        except BaseException as exc:  # noqa: BLE001 - the batch's owner gets it from result()
            output, error = None, exc
        with self._state:
            if batch.whole:
                self._running_whole = False
            else:
                self._running_in_lanes -= 1
            self._start_waiting()
            self._state.notify_all()
        if error is not None:
            batch.future.set_exception(error)
        else:
            batch.future.set_result(output)

    def close(self) -> None:
        """Run what is queued, then stop the threads and drop the sessions."""
        with self._state:
            self._state.wait_for(self._idle)
            self._session = self._lane_session = None
        self._whole_worker.shutdown(wait=True)
        self._lane_workers.shutdown(wait=True)


class _Waiting(NamedTuple):
    hidden: np.ndarray
    mask: np.ndarray
    whole: bool  # runs on every thread
    future: Future


def _open_session(model_path: str | Path, num_threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError("the onnx backend needs onnxruntime: pip install 'bertnpu[onnx]'") from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
        raise BundleError(model_path, f"ONNX Runtime cannot load it ({exc})") from exc


def _run(session: object, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    (output,) = session.run([ONNX_OUTPUT], {ONNX_HIDDEN_INPUT: hidden, ONNX_MASK_INPUT: attention_mask})
    return output


def _usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    for what, shape in (
        (f"input {ONNX_HIDDEN_INPUT!r}", hidden_input.shape),
        (f"output {ONNX_OUTPUT!r}", outputs[ONNX_OUTPUT].shape),
    ):
        width = shape[-1] if shape else None
        if len(shape or ()) != 3 or (isinstance(width, int) and width != hidden_size):
            raise BundleError(
                model_path,
                f"{what} has shape {shape}; expected [batch, seq, {hidden_size}] (bundle.json's hidden_size)",
            )
