"""NpuEncoder on the qbruntime test double (and on the real qbruntime, which has no card here)."""

import sys
import threading
import time

import numpy as np
import pytest
from vectors import cosine_rows

from bertnpu_runtime.backends.npu import NpuEncoder
from bertnpu_runtime.backends.npu_device import probe_npu
from bertnpu_runtime.backends.onnx import OnnxEncoder
from bertnpu_runtime.bundle import NpuSpec
from bertnpu_runtime.errors import BackendUnavailableError, BundleError, EncoderClosedError, NpuCallError
from bertnpu_runtime.options import NpuOptions
from bertnpu_runtime.pooling import pool
from bertnpu_runtime.testing import FakeNpu

HIDDEN = 32
LENGTHS = [5, 9, 9, 3, 12, 9, 1, 7, 12, 2]  # mixed, with repeats; the batch is padded to 12


@pytest.fixture(scope="module")
def encoder_onnx(tiny_bundle):
    return tiny_bundle / "encoder.onnx"


@pytest.fixture(scope="module")
def onnx(encoder_onnx):
    encoder = OnnxEncoder(encoder_onnx)
    yield encoder
    encoder.close()


@pytest.fixture
def mxq(tmp_path):
    path = tmp_path / "model.mxq"
    path.write_bytes(b"fake mxq")  # the fake only needs the file to exist
    return path


def batch(lengths=LENGTHS, seed=0):
    """Random hidden states [batch, seq, 32] with a right-padded int64 mask of the given lengths."""
    seq = max(lengths)
    hidden = np.random.default_rng(seed).standard_normal((len(lengths), seq, HIDDEN)).astype(np.float32)
    mask = (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return hidden, mask


def sentence_widths(fake):
    """The padded width each sentence was sent to the NPU with, over every recorded call."""
    widths = []
    for call in fake.calls:
        widths += [call.shapes[0][-2]] * call.sentences  # shapes[0]: (1, W, C) or (n, 1, W, C)
    return sorted(widths)


def npu(mxq, fake, mask_input=None, **kwargs):
    return NpuEncoder(mxq, NpuSpec(mask_input), HIDDEN, NpuOptions(qbruntime_module=fake, **kwargs))


# --- parity with ONNX --------------------------------------------------------------------------------


def test_dynamic_length_model_gives_the_onnx_vectors(encoder_onnx, onnx, mxq):
    hidden, mask = batch()
    with npu(mxq, FakeNpu(encoder_onnx), cores=4) as encoder:
        out = encoder.run(hidden, mask)
    assert out.shape == hidden.shape and out.dtype == np.float32
    assert cosine_rows(pool(out, mask), pool(onnx.run(hidden, mask), mask)).min() >= 0.99999
    assert not out[mask == 0].any()  # padding rows come back as zeros


@pytest.mark.parametrize("mask_input", ["keep", "additive"])
def test_static_variants_with_mask_give_the_onnx_vectors(encoder_onnx, onnx, mxq, mask_input):
    hidden, mask = batch()
    fake = FakeNpu(encoder_onnx, variants=[4, 8, 16], mask_input=mask_input)
    with npu(mxq, fake, mask_input, cores=2) as encoder:
        out = encoder.run(hidden, mask)
    assert cosine_rows(pool(out, mask), pool(onnx.run(hidden, mask), mask)).min() >= 0.99999
    # Each sentence went to the smallest variant that fits it; 16 is wider than the batch's 12.
    assert sentence_widths(fake) == sorted({1: 4, 2: 4, 3: 4, 5: 8, 7: 8, 9: 16, 12: 16}[n] for n in LENGTHS)
    assert all(len(call.shapes) == 2 and call.shapes[1][-1] == 1 for call in fake.calls)


def test_variable_multiple_variant_pads_to_the_next_multiple(encoder_onnx, onnx, mxq):
    hidden, mask = batch([5, 8, 3])
    fake = FakeNpu(encoder_onnx, variants=[-4], max_width=64, mask_input="keep", max_batch=None)
    with npu(mxq, fake, "keep", cores=1, group_sentences=True) as encoder:
        out = encoder.run(hidden, mask)
    assert sorted(call.shapes[0] for call in fake.calls) == [(1, 4, HIDDEN), (2, 1, 8, HIDDEN)]
    assert cosine_rows(pool(out, mask), pool(onnx.run(hidden, mask), mask)).min() >= 0.99999


# --- grouping and cores ------------------------------------------------------------------------------


def test_equal_lengths_share_one_unpadded_call(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, max_batch=None)
    with npu(mxq, fake, cores=1, group_sentences=True) as encoder:
        encoder.run(*batch([5, 9, 5, 3, 5]))
    assert [call.shapes for call in fake.calls] == [((1, 9, HIDDEN),), ((3, 1, 5, HIDDEN),), ((1, 3, HIDDEN),)]


def test_empty_batches_and_empty_rows_make_no_call(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, max_batch=None)
    with npu(mxq, fake, cores=1, group_sentences=True) as encoder:
        assert encoder.run(np.zeros((0, 4, HIDDEN), np.float32), np.zeros((0, 4), np.int64)).shape == (0, 4, HIDDEN)
        hidden, mask = batch([4, 0, 4])
        output = encoder.run(hidden, mask)
    assert [call.shapes for call in fake.calls] == [((2, 1, 4, HIDDEN),)]
    assert not output[1].any()


@pytest.mark.parametrize("group", [None, False])
def test_one_sentence_per_call_is_the_default_in_single_core_mode(mxq, group):
    fake = FakeNpu(hidden_size=HIDDEN, max_batch=None)
    with npu(mxq, fake, cores=1, group_sentences=group) as encoder:
        encoder.run(*batch([5, 5, 5]))
    assert [call.shapes for call in fake.calls] == [((1, 5, HIDDEN),)] * 3


def _count_refusals(fake):
    """Wrap every launched model's infer; returns the list that each refused call appends to."""
    refused = []
    for model in fake.models:

        def infer(inputs, *args, _infer=model.infer, **kwargs):
            try:
                return _infer(inputs, *args, **kwargs)
            except Exception:
                refused.append(inputs[0].shape)
                raise

        model.infer = infer
    return refused


def test_a_refused_4d_call_is_run_one_sentence_at_a_time_and_grouping_stops(encoder_onnx, onnx, mxq, caplog):
    hidden, mask = batch()  # lengths 9 x 3 and 12 x 2: two 4-D calls
    fake = FakeNpu(encoder_onnx, max_batch=1)
    with npu(mxq, fake, cores=1, group_sentences=True) as encoder, caplog.at_level("WARNING", logger="bertnpu"):
        refused = _count_refusals(fake)
        out = encoder.run(hidden, mask)
        refused_first = len(refused)
        again = encoder.run(hidden, mask)
    assert cosine_rows(pool(out, mask), pool(onnx.run(hidden, mask), mask)).min() >= 0.99999
    np.testing.assert_array_equal(again, out)
    assert refused_first >= 1 and all(shape[0] > 1 for shape in refused)
    assert len(refused) == refused_first  # the second batch was planned one sentence per call
    assert all(len(call.shapes[0]) == 3 for call in fake.calls)  # every call that ran held one sentence
    warnings = [r for r in caplog.records if "one sentence per call" in r.getMessage()]
    assert len(warnings) == 1 and "Model_ShapeMismatched" in warnings[0].getMessage()


def test_a_call_that_fails_one_sentence_at_a_time_too_raises_and_grouping_stays(mxq, caplog):
    fake = FakeNpu(hidden_size=HIDDEN)
    with npu(mxq, fake, cores=1) as encoder, caplog.at_level("WARNING", logger="bertnpu"):
        for model in fake.models:
            model.dispose()  # every call now raises Model_NotLaunched, whatever its size
        with pytest.raises(
            NpuCallError, match=r"^NPU call failed on \(cluster 0, core 0\): Model_NotLaunched occurred\.$"
        ):
            encoder.run(*batch([5, 5, 5]))  # one line, naming the core and qbruntime's code
    assert not [r for r in caplog.records if "one sentence per call" in r.getMessage()]


def test_work_is_spread_over_all_cores(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, latency_s=0.05, max_batch=None)  # busy cores: each call waits for a free one
    with npu(mxq, fake, cores=4, group_sentences=True) as encoder:
        encoder.run(*batch([6] * 8))  # one length: split into 4 calls of 2, one per core
    assert sorted(call.shapes for call in fake.calls) == [((2, 1, 6, HIDDEN),)] * 4
    assert sorted(call.core for call in fake.calls) == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_cores_run_concurrently(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, latency_s=0.1)
    with npu(mxq, fake, cores=4) as encoder:
        start = time.perf_counter()
        encoder.run(*batch([2, 3, 4, 5, 6, 7, 8, 9]))  # 8 calls of 0.1 s
        wall = time.perf_counter() - start
    assert len(fake.calls) == 8 and len({call.core for call in fake.calls}) == 4
    assert wall < 0.5  # about 0.2 s on four cores; 0.8 s on one


def test_core_selection(mxq, caplog):
    fake = FakeNpu(hidden_size=HIDDEN, num_cores=8)
    with npu(mxq, fake) as encoder:  # default: every core of an ARIES card
        assert encoder.cores == fake.all_cores() and fake.busy_cores() == set(fake.all_cores())
    with npu(mxq, fake, cores=5) as encoder:
        assert encoder.cores == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    with npu(mxq, fake, cores=[(1, 2), (0, 3)]) as encoder:
        assert fake.busy_cores() == {(1, 2), (0, 3)}
    regulus = FakeNpu(hidden_size=HIDDEN, device_name="regulus-ra", num_cores=1)
    with npu(mxq, regulus) as encoder:
        assert encoder.cores == [(0, 0)]
    unknown = FakeNpu(hidden_size=HIDDEN, device_name="future-card")
    with caplog.at_level("WARNING", logger="bertnpu"), npu(mxq, unknown) as encoder:
        assert encoder.cores == [(0, 0)]
    assert "unknown device 'future-card', using 1 core" in caplog.text
    assert "npu_cores= to SentenceEncoder" in caplog.text and "cores= to NpuEncoder" in caplog.text
    for bad in (0, 9, [(0, 0), (0, 0)], [(2, 0)], [(0, 4)], []):
        with pytest.raises(ValueError, match="cores"):
            npu(mxq, fake, cores=bad)
    assert fake.busy_cores() == set()


# --- errors ------------------------------------------------------------------------------------------


def test_a_length_no_variant_accepts(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, variants=[4, 8], mask_input="keep")
    with (
        npu(mxq, fake, "keep", cores=1) as encoder,
        pytest.raises(ValueError, match=r"12 tokens; its variants accept: 4; 8$"),
    ):
        encoder.run(*batch([3, 12]))
    static_maskless = FakeNpu(hidden_size=HIDDEN, variants=[8])
    with npu(mxq, static_maskless, cores=1) as encoder:
        encoder.run(*batch([8, 8]))
        with pytest.raises(ValueError, match="5 tokens.*no mask input, so sentences cannot be padded"):
            encoder.run(*batch([8, 5]))
    bounded = FakeNpu(hidden_size=HIDDEN, variants=[-1], max_width=10)
    with npu(mxq, bounded, cores=1) as encoder, pytest.raises(ValueError, match="any length up to 10"):
        encoder.run(*batch([11]))


def test_bad_batches(mxq):
    with npu(mxq, FakeNpu(hidden_size=HIDDEN), cores=1) as encoder:
        hidden, mask = batch([3, 2])
        with pytest.raises(ValueError, match="right-padded"):
            encoder.run(hidden, mask[:, ::-1].copy())
        with pytest.raises(ValueError, match="float32"):
            encoder.run(hidden.astype(np.float64), mask)
        with pytest.raises(ValueError, match="attention_mask must be"):
            encoder.run(hidden, mask[:, :2])


@pytest.mark.parametrize(
    "fake_kwargs, spec, message",
    [
        ({"mask_input": "keep", "variants": [8]}, None, r"variant 0 has 2 inputs .* means 1"),
        ({"variants": [-1]}, "additive", r"variant 0 has 1 inputs .* means 2"),
        ({"hidden_size": 64}, None, r"input 0 has shape \(H, W, C\) = \(1, -1, 64\), expected \(1, seq, 32\)"),
    ],
)
def test_an_mxq_that_disagrees_with_the_bundle(mxq, fake_kwargs, spec, message):
    fake = FakeNpu(**{"hidden_size": HIDDEN, **fake_kwargs})
    with pytest.raises(BundleError, match=message) as error:
        npu(mxq, fake, spec, cores=2)
    assert str(mxq) in str(error.value)
    assert fake.busy_cores() == set() and all(not m.launched for m in fake.models)


def test_no_device_names_the_device_number(mxq):
    with pytest.raises(
        BackendUnavailableError, match=r"device 3 \(dev_no=3; qbruntime sees \['aries-rb'\]\): Acc_DeviceNotFound"
    ):
        npu(mxq, FakeNpu(hidden_size=HIDDEN), device_no=3)


def test_real_qbruntime_without_a_card(mxq):
    with pytest.raises(BackendUnavailableError, match=r"dev_no=0; qbruntime sees \[\]\): Acc_DeviceNotFound"):
        NpuEncoder(mxq, NpuSpec(), HIDDEN)


def test_missing_mxq_is_backend_unavailable(tmp_path):
    fake = FakeNpu(hidden_size=HIDDEN)
    with pytest.raises(BackendUnavailableError, match=r"absent\.mxq: qbruntime cannot load it \(Model_FailedToLoadMXQ"):
        npu(tmp_path / "absent.mxq", fake)


def test_a_busy_core_releases_what_was_launched(mxq):
    fake = FakeNpu(hidden_size=HIDDEN)
    config = fake.ModelConfig()
    config.set_single_core_mode(None, [fake.CoreId(fake.Cluster.Cluster0, fake.Core.Core1)])
    other = fake.Model(str(mxq), config)
    other.launch(fake.Accelerator())
    with pytest.raises(
        BackendUnavailableError, match=r"device 0, \(cluster 0, core 1\): Acc_CoreAlreadyInUse"
    ) as raised:
        npu(mxq, fake, cores=3)
    assert "still open" in str(raised.value) and "npu_cores=" in str(raised.value)  # what to do about it
    assert fake.busy_cores() == {(0, 1)}


# --- lifecycle and threads ---------------------------------------------------------------------------


def test_close_disposes_every_model_and_is_idempotent(mxq):
    fake = FakeNpu(hidden_size=HIDDEN)
    encoder = npu(mxq, fake, cores=4)
    assert len(fake.models) == 4 and all(m.launched for m in fake.models)
    encoder.close()
    encoder.close()
    assert all(m.disposed for m in fake.models) and fake.busy_cores() == set()
    with pytest.raises(RuntimeError, match="after close"):
        encoder.run(*batch([3]))


def test_concurrent_runs_equal_sequential_runs(encoder_onnx, mxq):
    batches = [batch(lengths, seed) for seed, lengths in enumerate([LENGTHS, [4, 4, 4, 4], [7, 1], [12, 11, 10, 3, 3]])]
    with npu(mxq, FakeNpu(encoder_onnx), cores=3) as encoder:
        expected = [encoder.run(h, m) for h, m in batches]
        results: dict[tuple[int, int], np.ndarray] = {}

        def work(thread: int) -> None:
            for i in range(len(batches)):
                j = (i + thread) % len(batches)
                results[thread, j] = encoder.run(*batches[j])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 4 * len(batches)
    for (_, j), out in results.items():
        np.testing.assert_allclose(out, expected[j], atol=1e-6)


# --- probe -------------------------------------------------------------------------------------------


def test_probe_npu():
    assert probe_npu() == "no Mobilint NPU found (qbruntime.get_available_devices() returned [])"
    fake = FakeNpu(hidden_size=HIDDEN)
    assert probe_npu(fake) is None
    assert fake.log_level == fake.LogLevel.Off
    assert "no Mobilint NPU found" in probe_npu(FakeNpu(hidden_size=HIDDEN, num_devices=0))


def test_probe_npu_without_qbruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "qbruntime", None)  # makes `import qbruntime` raise ImportError
    assert probe_npu() == "qbruntime is not installed (pip install 'bertnpu[npu]')"


def test_busy_cores_take_a_group_as_one_call(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, latency_s=0.02, max_batch=None)
    with npu(mxq, fake, cores=4, group_sentences=True) as encoder:
        first = encoder.submit(*batch([6] * 8))  # idle NPU: split over the 4 cores
        second = encoder.submit(*batch([5] * 8))  # cores busy: one call, no extra per-call cost
        first.result(), second.result()
    assert sorted(call.shapes for call in fake.calls) == [((2, 1, 6, HIDDEN),)] * 4 + [((8, 1, 5, HIDDEN),)]


def test_an_infer_error_reaches_the_caller_and_the_encoder_goes_on(mxq):
    fake = FakeNpu(hidden_size=HIDDEN)
    with npu(mxq, fake, cores=2) as encoder:
        real_infer = {model: model.infer for model in fake.models}
        for model in fake.models:
            model.infer = lambda inputs: (_ for _ in ()).throw(RuntimeError("Model_InferFailed"))
        with pytest.raises(RuntimeError, match="Model_InferFailed"):
            encoder.run(*batch([4, 4, 3, 3]))
        for model, infer in real_infer.items():
            model.infer = infer
        out = encoder.run(*batch([4, 4, 3, 3]))
    assert out.shape == (4, 4, HIDDEN)


def test_submit_returns_before_the_npu_is_done(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, latency_s=0.05)
    with npu(mxq, fake, cores=1) as encoder:
        start = time.perf_counter()
        pending = encoder.submit(*batch([3, 3]))
        assert time.perf_counter() - start < 0.05 and not pending.done()
        out = pending.result()
        assert pending.done() and time.perf_counter() - start >= 0.1
    np.testing.assert_array_equal(out, np.zeros((2, 3, HIDDEN), np.float32))


def test_close_while_others_submit_never_leaves_a_call_unrun(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, latency_s=0.001)
    encoder = npu(mxq, fake, cores=2)
    outcomes: list[str] = []

    def work() -> None:
        for _ in range(50):
            try:
                pending = encoder.submit(*batch([3, 3, 2]))
            except RuntimeError:
                outcomes.append("refused")
                return
            try:
                pending.result()  # would hang if a call were queued after the workers stopped
            except EncoderClosedError:
                outcomes.append("withdrawn")
                return
            outcomes.append("done")

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.02)
    encoder.close()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a submit() was left waiting"
    assert "done" in outcomes and outcomes.count("refused") + outcomes.count("withdrawn") == 3
