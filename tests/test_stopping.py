"""Stopping in the middle of encode(): Ctrl-C, a signal handler's sys.exit, close() from another
thread, on both backends. The process ends promptly with the usual status, queued encoder work is
withdrawn, and the NPU cores are free afterwards."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bertnpu_runtime import EncoderClosedError, SentenceEncoder
from bertnpu_runtime.testing import FakeNpu, bundle_with_placeholder_mxq

# Far more work than the tests wait for: each would run for minutes if nothing stopped it.
LONG_INPUT = "[f'sentence {i} about a dog that runs in the park with a ball' for i in range(400_000)]"
# A bound for "promptly": generous for a loaded 2-vCPU machine, and below NpuEncoder.CLOSE_TIMEOUT_S,
# the time the old code waited for queued NPU calls before leaving models undisposed.
PROMPT_EXIT_S = 4.0


@pytest.fixture(scope="module")
def npu_bundle(tiny_bundle, tmp_path_factory):
    return bundle_with_placeholder_mxq(tiny_bundle, tmp_path_factory.mktemp("stopping") / "bundle")


def _encoder_script(bundle: Path, backend: str, prelude: str = "") -> str:
    """A script that opens an encoder, prints "ready" and encodes LONG_INPUT. ONNX runs on the
    default model (its batches outlast the interpreter's exit path, as a user's do); the NPU one
    runs on the test double at 10 ms a sentence on one core, so its queue holds seconds of calls."""
    if backend == "npu":
        opening = (
            f"fake = FakeNpu({str(bundle / 'encoder.onnx')!r}, latency_s=0.01)\n"
            f"encoder = SentenceEncoder({str(bundle)!r}, backend='npu', npu_cores=1, qbruntime_module=fake)\n"
        )
    else:
        opening = f"encoder = SentenceEncoder({str(bundle)!r}, backend='onnx')\n"
    return (
        "import signal, sys\n"
        "from bertnpu_runtime import SentenceEncoder\n"
        "from bertnpu_runtime.testing import FakeNpu\n" + textwrap.dedent(prelude) + opening + f"texts = {LONG_INPUT}\n"
        "print('ready', flush=True)\n"
        "encoder.encode(texts)\n"
        "print('finished: nothing stopped it', flush=True)\n"
    )


def _stop_while_encoding(script: str, sig: int) -> tuple[int, float, str]:
    """Run `script`, send `sig` one second into its encode(); (exit status, seconds from the signal
    to the exit, stderr). A process still alive 30 s after the signal is killed and fails the test."""
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready", process.stderr.read()
        time.sleep(1.0)
        sent = time.monotonic()
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
        return process.returncode, time.monotonic() - sent, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("backend", ["onnx", "npu"])
def test_ctrl_c_during_encode_ends_the_process_promptly_with_sigint_status(backend, default_bundle, npu_bundle):
    bundle = npu_bundle if backend == "npu" else default_bundle
    status, seconds, stderr = _stop_while_encoding(_encoder_script(bundle, backend), signal.SIGINT)
    assert status == -signal.SIGINT, stderr  # Python's exit for an uncaught KeyboardInterrupt: 130 in a shell
    assert "KeyboardInterrupt" in stderr
    assert seconds < PROMPT_EXIT_S, f"{seconds:.1f} s from Ctrl-C to exit\n{stderr}"
    assert "terminate called" not in stderr and "left undisposed" not in stderr, stderr


@pytest.mark.parametrize("backend", ["onnx", "npu"])
def test_sys_exit_from_a_signal_handler_during_encode_ends_the_process(backend, default_bundle, npu_bundle):
    bundle = npu_bundle if backend == "npu" else default_bundle
    prelude = "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
    status, seconds, stderr = _stop_while_encoding(_encoder_script(bundle, backend, prelude), signal.SIGTERM)
    assert status == 143, stderr
    assert seconds < PROMPT_EXIT_S, f"{seconds:.1f} s from SIGTERM to exit\n{stderr}"
    assert "left undisposed" not in stderr, stderr


def _close_during_encode(encoder: SentenceEncoder) -> tuple[float, BaseException | None]:
    """close() from a second thread one second into a long encode(); (seconds close() took, what
    encode() raised)."""
    raised: list[BaseException | None] = [None]

    def encode() -> None:
        try:
            encoder.encode([f"sentence {i} about a dog that runs in the park" for i in range(400_000)])
        except BaseException as exc:
            raised[0] = exc

    worker = threading.Thread(target=encode)
    worker.start()
    time.sleep(1.0)
    started = time.monotonic()
    encoder.close()
    closing_s = time.monotonic() - started
    worker.join(30)
    assert not worker.is_alive(), "encode() went on after close()"
    return closing_s, raised[0]


def test_close_from_another_thread_stops_an_npu_encode_and_frees_the_cores(npu_bundle):
    fake = FakeNpu(npu_bundle / "encoder.onnx", latency_s=0.01)
    encoder = SentenceEncoder(npu_bundle, backend="npu", npu_cores=2, qbruntime_module=fake)
    closing_s, raised = _close_during_encode(encoder)
    assert closing_s < 1.0, f"close() took {closing_s:.1f} s"  # one 10 ms call per core, not the queue
    assert isinstance(raised, EncoderClosedError) and "closed" in str(raised)
    assert fake.busy_cores() == set() and all(model.disposed for model in fake.models)
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=2, qbruntime_module=fake) as again:
        assert again.encode("the cores are free again").shape == (again.dim,)


def test_close_from_another_thread_stops_an_onnx_encode(tiny_bundle):
    encoder = SentenceEncoder(tiny_bundle, backend="onnx")
    closing_s, raised = _close_during_encode(encoder)
    assert closing_s < 1.0, f"close() took {closing_s:.1f} s"
    assert isinstance(raised, EncoderClosedError) and "closed" in str(raised)
    with pytest.raises(EncoderClosedError, match="closed"):
        encoder.encode("after close")


def test_an_interrupted_encode_withdraws_its_queued_npu_calls(npu_bundle):
    """The encoder stays usable after an interrupt it survives, and the interrupted call's queued
    work does not run in the background."""
    fake = FakeNpu(npu_bundle / "encoder.onnx", latency_s=0.002)
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=1, qbruntime_module=fake) as encoder:
        interrupt_after = 20

        def interrupting(batches, total):
            for number, batch in enumerate(batches):
                if number == interrupt_after:
                    raise KeyboardInterrupt
                yield batch

        pipeline = encoder.pipeline
        texts = [f"sentence {i} about a dog in the park" for i in range(20_000)]
        with pytest.raises(KeyboardInterrupt):
            pipeline.encode(texts, 8, progress=interrupting)
        time.sleep(0.2)  # let a core finish the call it was in
        calls_after_interrupt = len(fake.calls)
        time.sleep(0.3)
        assert len(fake.calls) == calls_after_interrupt, "withdrawn calls ran after the interrupt"
        assert calls_after_interrupt <= interrupt_after * 8
        assert encoder.encode("still works").shape == (encoder.dim,)
