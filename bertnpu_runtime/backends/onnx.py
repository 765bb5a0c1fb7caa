"""ONNX Runtime encoder backend (CPU): runs the bundle's encoder.onnx (either form of encoder_graph.py)
on padded batches."""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT, ONNX_OUTPUT
from ..encoder_graph import encoder_feed, hidden_input, takes_packed
from ..errors import BackendUnavailableError, BundleError, EncoderClosedError
from ..options import check_num_threads
from .base import BackendHints

logger = logging.getLogger("bertnpu")


# Padded tokens queued per lane beyond the batch the pipeline waits for: a batch or two of
# STS-B-length sentences, so that a lane that finishes finds the next batch ready.
LANE_QUEUED_TOKENS = 2048
# The most padded tokens in one batch: all-MiniLM-L6-v2 encodes 256-token texts 1.10x as fast in
# batches of 8 as of 32 (benchmarks.batch_tokens), and a shorter run frees its lane sooner for another
# call's batch. 1,024 would also cut ordinary sentences' batches (32 of over 32 tokens).
BATCH_TOKENS = 2048
# A waiting batch lets at most this many batches of small calls go before it.
MOST_OVERTAKEN = 16
# A call's only batch takes a lane rather than every thread when a lane run ended this recently:
# after a run on every thread, ORT's pool thread spins for milliseconds (about 16 ms on Zen). With it
# (and the server's hold), 8 one-sentence clients used 3.3 ms of CPU a request instead of 4.4.
LANES_LATELY_S = 0.020


class OnnxEncoder:
    """The encoder on ONNX Runtime's CPU provider. Thread-safe: ORT sessions allow concurrent `run`.

    `submit` runs batches on threads of this encoder's own. An encode() call's only batch runs on
    every thread (a session of `num_threads` intra-op threads). The batches of a longer call run
    `lanes` at a time, each on one thread (a second, single-threaded session): single-threaded runs
    never wait for each other between operators, and on two cores two of them encode 1.1-1.3x the
    sentences of one two-threaded run. `run` always uses every thread.
    Waiting batches start in the order they came, except that a batch of a small call (at most
    BATCH_TOKENS `call_tokens`: one batch's worth) goes before those of larger calls, each of which
    it passes at most MOST_OVERTAKEN times: a server's one-sentence request waits for a lane, not
    for the batches a big request queued. Small calls keep their order among themselves: were a
    call of 1 sentence to pass one of 40, the 40 would wait while single sentences ran one by one.
    """

    name = "onnx"
    # close() waits this long for running batches after telling ONNX Runtime to stop them.
    CLOSE_TIMEOUT_S = 5.0

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
        self._packed = takes_packed(self._session)
        self.lanes = lanes if lanes is not None else (num_threads or _usable_cores())
        self._lane_session = _open_session(model_path, 1) if self.lanes > 1 else None
        # Enough queued for every lane; any lengths share a batch, cut where padding costs more than a call.
        queued = LANE_QUEUED_TOKENS * self.lanes if self.lanes > 1 else 1
        # Two calls at once: one call's batches fill the lanes while the other's host stages run.
        self.hints = BackendHints(
            queued_tokens=queued,
            call_cost_tokens=call_cost_tokens(width),
            batch_tokens=BATCH_TOKENS,
            concurrent_calls=2,
        )
        # Whole-machine runs keep a thread of their own: ORT runs one called from changing threads
        # 15-35% slower (one-sentence encode() on two cores).
        self._whole_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertnpu-onnx")
        self._lane_workers = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="bertnpu-onnx-lane")
        self._state = threading.Condition()
        self._waiting: deque[_Waiting] = deque()
        self._running_whole = False
        self._running_in_lanes = 0
        self._lane_run_ended = -math.inf  # time.monotonic() when the last lane run ended
        self._closed = False
        self._run_options = _new_run_options()  # shared by every run: close() sets its terminate flag

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """hidden float32 [batch, seq, hidden], attention_mask int64 [batch, seq] -> float32 [batch, seq, hidden]."""
        session = self._session
        if session is None:
            raise EncoderClosedError("the encoder is closed: OnnxEncoder.run() called after close()")
        try:
            return _run(session, hidden, attention_mask, self._packed, self._run_options)
        except Exception as exc:
            raise self._closed_error(exc) from exc

    def submit(
        self, hidden: np.ndarray, attention_mask: np.ndarray, alone: bool = False, call_tokens: int | None = None
    ) -> Future:
        """Queue the batch for this encoder's threads; the Future's `result()` is run()'s output,
        and its `cancel()` withdraws the batch until a thread takes it.
        alone: the batch is its call's only one: it gets every thread if nothing else is queued or
        running (else it takes a lane, as concurrent encode() calls' batches do).
        call_tokens: its call's size, when known: a small call's batch goes before waiting batches
        of larger calls."""
        future: Future = Future()
        with self._state:
            if self._closed:
                raise EncoderClosedError("the encoder is closed: OnnxEncoder.submit() called after close()")
            whole = self._lane_session is None or (alone and self._idle() and not self._lanes_ran_lately())
            small = call_tokens is not None and call_tokens <= BATCH_TOKENS
            self._queue(_Waiting(hidden, attention_mask, whole, future, small))
            self._start_waiting()
        return future

    def _queue(self, batch: _Waiting) -> None:
        """Put the batch behind the last waiting batch of a small call, if it is one, or that has
        been passed MOST_OVERTAKEN times (holding self._state)."""
        place = len(self._waiting)
        while place and batch.small_call and not self._waiting[place - 1].small_call:
            if self._waiting[place - 1].overtaken >= MOST_OVERTAKEN:
                break
            place -= 1
        for passed in itertools.islice(self._waiting, place, None):
            passed.overtaken += 1
        self._waiting.insert(place, batch)

    def _lanes_ran_lately(self) -> bool:
        """A lane run ended within LANES_LATELY_S (holding self._state): concurrent calls come
        and go, and a run on every thread would leave ONNX Runtime's pool thread spinning after it
        on a core their lane runs need."""
        return time.monotonic() - self._lane_run_ended < LANES_LATELY_S

    def _idle(self) -> bool:
        """Nothing queued or running (holding self._state)."""
        return not (self._waiting or self._running_whole or self._running_in_lanes)

    def _start_waiting(self) -> None:
        """Start waiting batches in order, while they may (holding self._state): a whole-machine
        run only with nothing else running, lane runs up to `lanes` at once. Cancelled ones are dropped."""
        while self._waiting and not self._running_whole:
            if self._waiting[0].future.cancelled():
                self._waiting.popleft()
                continue
            whole = self._waiting[0].whole
            if (whole and self._running_in_lanes) or self._running_in_lanes == self.lanes:
                return
            batch = self._waiting.popleft()
            if not batch.future.set_running_or_notify_cancel():
                continue
            self._count_running(batch.whole, +1)
            pool, session = (self._whole_worker, self._session) if whole else (self._lane_workers, self._lane_session)
            try:
                pool.submit(self._run_waiting, session, batch)
            except RuntimeError:  # the pools take no more work once the interpreter is exiting
                self._count_running(batch.whole, -1)
                batch.future.set_exception(EncoderClosedError("the interpreter is exiting: the batch was not run"))

    def _count_running(self, whole: bool, change: int) -> None:
        if whole:
            self._running_whole = change > 0
        else:
            self._running_in_lanes += change
            if change < 0:
                self._lane_run_ended = time.monotonic()

    def _run_waiting(self, session: object, batch: _Waiting) -> None:
        try:
            output, error = _run(session, batch.hidden, batch.mask, self._packed, self._run_options), None
        except BaseException as exc:  # noqa: BLE001 - the batch's owner gets it from result()
            output, error = None, self._closed_error(exc)
        with self._state:
            self._count_running(batch.whole, -1)
            self._start_waiting()
            self._state.notify_all()
        if error is not None:
            batch.future.set_exception(error)
        else:
            batch.future.set_result(output)

    def _closed_error(self, error: BaseException) -> BaseException:
        """A run that close() stopped fails with EncoderClosedError; any other failure as it is."""
        if self._closed and isinstance(error, Exception):
            return EncoderClosedError("the encoder was closed while this batch ran")
        return error

    def health(self) -> str | None:
        """None while open; ONNX Runtime has no device to lose."""
        return "the encoder is closed" if self._closed else None

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        """Fail the batches not started with EncoderClosedError, stop the running ones (ONNX
        Runtime's terminate flag; at most CLOSE_TIMEOUT_S), then drop the threads and sessions.
        Safe to call twice, and from another thread than the one encoding."""
        with self._state:
            self._closed = True
            withdrawn, self._waiting = self._waiting, deque()
            self._run_options.terminate = True
            stopped = self._state.wait_for(self._idle, timeout=self.CLOSE_TIMEOUT_S)
            self._session = self._lane_session = None
        for batch in withdrawn:
            if batch.future.set_running_or_notify_cancel():
                batch.future.set_exception(EncoderClosedError("the encoder was closed before this batch ran"))
        if not stopped:
            logger.warning(
                "onnx backend: a run did not stop within %.0f s of close(); its thread is left to end",
                self.CLOSE_TIMEOUT_S,
            )
        self._whole_worker.shutdown(wait=stopped)
        self._lane_workers.shutdown(wait=stopped)


@dataclass(eq=False)
class _Waiting:
    hidden: np.ndarray
    mask: np.ndarray
    whole: bool  # runs on every thread
    future: Future
    small_call: bool  # its call has at most BATCH_TOKENS tokens
    overtaken: int = 0  # how many later batches went before it


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


def _run(session: Any, hidden: np.ndarray, attention_mask: np.ndarray, packed: bool, run_options: Any) -> np.ndarray:
    (output,) = session.run([ONNX_OUTPUT], encoder_feed(hidden, attention_mask, packed), run_options)
    return output


def _new_run_options() -> Any:
    import onnxruntime as ort

    return ort.RunOptions()


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


def _graph_width(session: Any) -> int | None:
    """The hidden-state input's width, where the graph fixes it."""
    shape = hidden_input(session).shape or [None]
    return shape[-1] if isinstance(shape[-1], int) else None


def _check_width(model_path: str | Path, session: Any, hidden_size: int) -> None:
    """The graph's hidden-state input and output have the ranks of encoder_graph's forms and end in
    hidden_size where their shapes say so."""
    hidden = hidden_input(session)
    outputs = {o.name: o for o in session.get_outputs()}
    if ONNX_OUTPUT not in outputs:
        raise BundleError(model_path, f"expected an output {ONNX_OUTPUT!r}, found {sorted(outputs)}")
    for what, shape, forms in (
        (f"input {ONNX_HIDDEN_INPUT!r}", hidden.shape, {2: "[tokens, H]", 3: "[batch, seq, H]"}),
        (f"output {ONNX_OUTPUT!r}", outputs[ONNX_OUTPUT].shape, {3: "[batch, seq, H]"}),
    ):
        width = shape[-1] if shape else None
        if len(shape or ()) not in forms or (isinstance(width, int) and width != hidden_size):
            expected = " or ".join(forms.values()).replace("H", str(hidden_size))
            raise BundleError(model_path, f"{what} has shape {shape}; expected {expected} (bundle.json's hidden_size)")
