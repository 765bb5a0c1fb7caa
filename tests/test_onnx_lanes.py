"""The ONNX backend's lanes: a call's batches run two at a time on single-threaded sessions, a
call's only batch on every thread, with the same vectors either way."""

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from bertnpu_runtime import EncoderClosedError, SentenceEncoder
from bertnpu_runtime.backends import onnx as onnx_backend
from bertnpu_runtime.backends.onnx import BATCH_TOKENS, OnnxEncoder
from bertnpu_runtime.bundle import ONNX_MASK_INPUT

TEXTS = [f"sentence number {i} says {'more ' * (i % 7)}about the weather." for i in range(120)]


class SpySession:
    """Wraps an ORT session: counts its runs and how many of the sessions spied on ran at once;
    a run may be held until `gate` is set."""

    def __init__(self, inner, overlap: dict, gate: threading.Event | None = None, pause_s: float = 0.0) -> None:
        self._inner, self._overlap, self._gate, self._pause_s = inner, overlap, gate, pause_s
        self.runs = 0
        self.lengths: list[int] = []  # each run's padded length, in the order they started

    def run(self, names, feeds, run_options=None):
        with self._overlap["lock"]:
            self.runs += 1
            self.lengths.append(feeds[ONNX_MASK_INPUT].shape[1])
            self._overlap["now"] += 1
            self._overlap["most"] = max(self._overlap["most"], self._overlap["now"])
        try:
            if self._gate is not None:
                assert self._gate.wait(30), "the test never opened the gate"
            time.sleep(self._pause_s)  # long enough for a second lane to start meanwhile
            return self._inner.run(names, feeds, run_options)
        finally:
            with self._overlap["lock"]:
                self._overlap["now"] -= 1


def spied(backend: OnnxEncoder, pause_s: float = 0.0, gate: threading.Event | None = None):
    overlap = {"lock": threading.Lock(), "now": 0, "most": 0}
    whole = backend._session = SpySession(backend._session, overlap, gate, pause_s)
    lane = None
    if backend._lane_session is not None:  # lanes=1: no second session
        lane = backend._lane_session = SpySession(backend._lane_session, overlap, gate, pause_s)
    return whole, lane, overlap


def batch(rng: np.random.Generator, rows: int = 2, seq: int = 5) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((rows, seq, 32)).astype(np.float32), np.ones((rows, seq), dtype=np.int64)


def test_a_long_call_runs_in_both_lanes_with_the_vectors_of_one_lane(tiny_bundle, monkeypatch):
    one_lane = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=2, lanes=1)
    assert one_lane._lane_session is None and one_lane.hints.queued_tokens == 1  # no second session in memory
    with SentenceEncoder(tiny_bundle, backend=one_lane) as enc:
        expected = enc.encode(TEXTS, batch_size=8)

    backend = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=2, lanes=2)
    whole, lane, overlap = spied(backend, pause_s=0.005)
    with SentenceEncoder(tiny_bundle, backend=backend) as enc:
        vectors = enc.encode(TEXTS, batch_size=8)
        runs = lane.runs
        assert (whole.runs, overlap["most"]) == (0, 2) and runs >= len(TEXTS) // 8
        monkeypatch.setattr(onnx_backend, "LANES_LATELY_S", 60.0)
        right_after = enc.encode(TEXTS[5])  # a call's only batch, while lanes ran lately: a lane
        assert (whole.runs, lane.runs) == (0, runs + 1)
        monkeypatch.setattr(onnx_backend, "LANES_LATELY_S", 0.0)
        single = enc.encode(TEXTS[5])  # a call's only batch, the lanes long idle: every thread
        assert (whole.runs, lane.runs) == (1, runs + 1)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(single, expected[5], atol=1e-5)
    np.testing.assert_allclose(right_after, expected[5], atol=1e-5)


def test_an_only_batch_takes_a_lane_while_others_run_and_a_whole_run_runs_by_itself(tiny_bundle):
    backend = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=2, lanes=2)
    gate = threading.Event()
    whole, lane, overlap = spied(backend, pause_s=0.02, gate=gate)
    rng = np.random.default_rng(0)
    first = backend.submit(*batch(rng), alone=True)  # nothing else queued: every thread
    queued = [backend.submit(*batch(rng)), backend.submit(*batch(rng), alone=True)]  # behind it: lanes
    time.sleep(0.05)
    assert overlap["now"] == 1  # the lanes wait for the whole-machine run
    gate.set()
    outputs = [future.result(30) for future in [first, *queued]]
    assert (whole.runs, lane.runs, overlap["most"]) == (1, 2, 2)
    backend.close()
    reference = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=1, lanes=1)
    rng = np.random.default_rng(0)
    for output in outputs:
        np.testing.assert_allclose(output, reference.run(*batch(rng)), atol=1e-5)
    reference.close()


def run_order(backend: OnnxEncoder, gate: threading.Event, session: SpySession, submits) -> list[int]:
    """Submit (seq, call_tokens) batches while the first one is held at the gate; then the
    padded lengths in the order the batches ran."""
    rng = np.random.default_rng(4)
    futures = []
    for seq, call_tokens in submits:
        futures.append(backend.submit(*batch(rng, seq=seq), call_tokens=call_tokens))
        while not session.runs:  # the first batch is on the encoder before the others queue
            time.sleep(0.001)
    gate.set()
    for future in futures:
        future.result(30)
    backend.close()
    return session.lengths


def test_batches_of_a_small_call_go_before_those_a_larger_call_queued(tiny_bundle):
    backend = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=1, lanes=1)  # one batch at a time
    gate = threading.Event()
    whole, _, _ = spied(backend, gate=gate)
    big, small, unknown = [(6, BATCH_TOKENS + 1)] * 4, [(2, 4)], [(4, None)]
    order = run_order(backend, gate, whole, big + unknown + small)
    assert order == [6, 2, 6, 6, 6, 4]  # an unknown size is a large call's: it keeps its place


def test_small_calls_keep_their_order_among_themselves(tiny_bundle):
    backend = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=1, lanes=1)
    gate = threading.Event()
    whole, _, _ = spied(backend, gate=gate)
    order = run_order(backend, gate, whole, [(6, 4), (5, BATCH_TOKENS), (2, 4), (3, 1)])
    assert order == [6, 5, 2, 3]  # a one-batch call, however small, does not pass another


def test_a_waiting_batch_is_passed_at_most_most_overtaken_times(tiny_bundle, monkeypatch):
    monkeypatch.setattr("bertnpu_runtime.backends.onnx.MOST_OVERTAKEN", 2)
    backend = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=1, lanes=1)
    gate = threading.Event()
    whole, _, _ = spied(backend, gate=gate)
    order = run_order(backend, gate, whole, [(6, BATCH_TOKENS + 1)] * 2 + [(2, 4), (3, 4), (4, 4)])
    assert order == [6, 2, 3, 6, 4]  # the waiting big batch let two small ones by, not a third


def test_close_withdraws_what_is_queued_stops_what_runs_then_refuses_work(tiny_bundle):
    backend = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=2, lanes=2)
    gate = threading.Event()
    _, lane, _ = spied(backend, gate=gate)
    rng = np.random.default_rng(1)
    futures = [backend.submit(*batch(rng)) for _ in range(6)]
    while lane.runs < 2:  # both lanes hold a batch at the gate; four wait behind them
        time.sleep(0.001)
    threading.Timer(0.2, gate.set).start()  # the running two reach ONNX Runtime after close() told it to stop
    backend.close()
    assert all(future.done() for future in futures)
    for future, when in zip(futures, ["while this batch ran"] * 2 + ["before this batch ran"] * 4):
        with pytest.raises(EncoderClosedError, match=when):
            future.result()
    assert lane.runs == 2
    with pytest.raises(EncoderClosedError, match="after close"):
        backend.submit(*batch(rng))


def _timed(function: Callable[..., object], *args: object) -> float:
    started = time.monotonic()
    function(*args)
    return time.monotonic() - started


def test_close_stops_a_run_in_progress(tiny_bundle):
    """close() sets ONNX Runtime's terminate flag: a long run ends early with EncoderClosedError."""
    backend = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=1, lanes=1)
    hidden, mask = batch(np.random.default_rng(3), rows=256, seq=64)
    backend.run(hidden, mask)  # warm: a first run's set-up would make the half-run wait below too long
    one_run_s = min(_timed(backend.run, hidden, mask) for _ in range(3))  # a slow moment would overshoot the wait
    futures = [backend.submit(hidden, mask) for _ in range(50)]  # about 50 runs' work
    time.sleep(one_run_s / 2)
    started = time.monotonic()
    backend.close()
    closing_s = time.monotonic() - started
    assert closing_s < backend.CLOSE_TIMEOUT_S
    errors = [future.exception() for future in futures]
    assert all(isinstance(error, EncoderClosedError) for error in errors[1:]), [repr(error) for error in errors[:3]]
    assert errors[0] is None or isinstance(errors[0], EncoderClosedError)


def test_a_failing_run_reaches_its_batch_and_the_lanes_go_on(tiny_bundle):
    backend = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=2, lanes=2)
    rng = np.random.default_rng(2)
    hidden, mask = batch(rng)
    bad = backend.submit(hidden[:, :, :7].copy(), mask)  # the wrong width: ORT refuses it
    good = [backend.submit(*batch(rng)) for _ in range(3)]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        bad.result(30)
    assert all(future.result(30).shape == (2, 5, 32) for future in good)
    backend.close()


def test_lanes_default_to_the_threads_and_must_be_positive(tiny_bundle):
    assert OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=3).lanes == 3
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="lanes must be a positive int"):
            OnnxEncoder(tiny_bundle / "encoder.onnx", lanes=bad)
