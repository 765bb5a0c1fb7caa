"""A failing or hung card: bounded waits, clear errors, and a calling mode that only a shape refusal changes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from bertnpu_runtime import BackendUnavailableError, NpuTimeoutError, SentenceEncoder
from bertnpu_runtime.testing import FakeNpu, bundle_with_placeholder_mxq

TEXTS = [f"sentence number {i} about a dog in the park" for i in range(40)]


@pytest.fixture(scope="module")
def npu_bundle(tiny_bundle, tmp_path_factory):
    return bundle_with_placeholder_mxq(tiny_bundle, tmp_path_factory.mktemp("faults") / "bundle")


def test_a_hung_core_makes_encode_raise_in_time_and_close_return(npu_bundle):
    # 5 ms a sentence: without it, core (0, 0) could run every call before core (0, 1)'s thread woke
    # to take one, and nothing would hang (it happened once in CI)
    fake = FakeNpu(npu_bundle / "encoder.onnx", latency_s=0.005)
    fake.hang_core((0, 1))
    encoder = SentenceEncoder(npu_bundle, backend="npu", npu_cores=2, npu_timeout_s=1.0, qbruntime_module=fake)
    try:
        started = time.monotonic()
        with pytest.raises(NpuTimeoutError, match=r"npu_timeout_s=1 s; busy: \(cluster 0, core 1\)"):
            encoder.encode(TEXTS, batch_size=4)
        assert time.monotonic() - started < 1.0 + 5.0
        started = time.monotonic()
        encoder.close()
        assert time.monotonic() - started < 5.0 + 1.0
    finally:
        fake.unhang.set()


def test_the_process_exits_with_a_hung_core(npu_bundle):
    script = textwrap.dedent(f"""
        from bertnpu_runtime import SentenceEncoder, NpuTimeoutError
        from bertnpu_runtime.testing import FakeNpu
        fake = FakeNpu({str(npu_bundle / "encoder.onnx")!r})
        fake.hang_core((0, 0))
        encoder = SentenceEncoder({str(npu_bundle)!r}, backend="npu", npu_cores=1, npu_timeout_s=0.5, qbruntime_module=fake)
        try:
            encoder.encode(["a hung card"])
        except NpuTimeoutError:
            print("timed out")
        # no close(): the exit-time finalizer must not wait forever either
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "timed out", result.stderr


def test_a_transient_failure_fails_one_encode_and_keeps_grouping(npu_bundle, tiny_bundle):
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        expected = reference.encode(TEXTS)
    fake = FakeNpu(npu_bundle / "encoder.onnx", max_batch=None)
    fake.fail_core((0, 0), calls=[1])
    with SentenceEncoder(
        npu_bundle, backend="npu", npu_cores=1, npu_group_sentences=True, qbruntime_module=fake
    ) as encoder:
        with pytest.raises(Exception, match="Model_InferFailed"):
            encoder.encode(TEXTS)
        calls_before = len(fake.calls)
        np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5)
        later = fake.calls[calls_before:]
    assert max(call.sentences for call in later) > 1  # still several sentences per call
    assert len(later) < len(TEXTS)


def test_a_shape_refusal_turns_grouping_off(npu_bundle, tiny_bundle, caplog):
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        expected = reference.encode(TEXTS)
    fake = FakeNpu(npu_bundle / "encoder.onnx", max_batch=1)
    with SentenceEncoder(
        npu_bundle, backend="npu", npu_cores=1, npu_group_sentences=True, qbruntime_module=fake
    ) as encoder:
        np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5)
    assert "refused one call" in caplog.text


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), "30", True])
def test_a_bad_timeout_is_refused(npu_bundle, timeout):
    with pytest.raises(ValueError, match="npu timeout must be a positive number"):
        SentenceEncoder(
            npu_bundle, backend="npu", npu_timeout_s=timeout, qbruntime_module=FakeNpu(npu_bundle / "encoder.onnx")
        )


def test_a_core_that_keeps_failing_goes_out_of_service_and_the_others_serve(npu_bundle, tiny_bundle, caplog):
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        expected = reference.encode(TEXTS)
    fake = FakeNpu(npu_bundle / "encoder.onnx")
    fake.fail_core((0, 1))  # every call
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=2, qbruntime_module=fake) as encoder:
        assert encoder.npu_cores_in_service == [(0, 0), (0, 1)]
        for _ in range(10):  # each failed call is retried on (0, 0); after three in a row (0, 1) is dropped
            vectors = encoder.encode(TEXTS, batch_size=4)
            np.testing.assert_allclose(vectors, expected, atol=1e-5)
        assert encoder.npu_cores_in_service == [(0, 0)]
        stats = encoder.pipeline.backend.stats()
        assert stats["npu_call_failures"] == 3 and stats["npu_call_retries"] == 3
        assert "core (cluster 0, core 1) failed 3 calls in a row" in caplog.text
        assert "Model_InferFailed" in caplog.text


def test_no_core_left_is_a_clear_error_at_once(npu_bundle):
    fake = FakeNpu(npu_bundle / "encoder.onnx")
    fake.fail_core((0, 0))
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=1, npu_timeout_s=20, qbruntime_module=fake) as encoder:
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - the first failures are the runtime's own
            encoder.encode(TEXTS, batch_size=2)  # 20 calls: the third failure takes the only core out
        with pytest.raises(
            BackendUnavailableError, match=r"no NPU core is left in service.*\(cluster 0, core 0\): Model_InferFailed"
        ):
            encoder.encode(TEXTS)
        assert time.monotonic() - started < 10  # the queued calls failed; none waited for the timeout
        assert encoder.npu_cores_in_service == []


def test_failures_that_are_not_in_a_row_keep_the_core(npu_bundle):
    fake = FakeNpu(npu_bundle / "encoder.onnx")
    fake.fail_core((0, 0), calls=[1, 2, 4, 5, 7, 8])
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=1, qbruntime_module=fake) as encoder:
        for _ in range(9):
            with contextlib.suppress(Exception):
                encoder.encode(["one sentence"])
        assert encoder.npu_cores_in_service == [(0, 0)]
        assert encoder.encode(["one sentence"]).shape == (1, encoder.dim)
