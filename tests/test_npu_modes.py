"""The NPU path as Mobilint runs it: a whole-BertModel .mxq (pooler among its outputs, a padding
mask input or not), one sentence per call by default, the four core modes, boards by name."""

from __future__ import annotations

import numpy as np
import pytest
from vectors import cosine_rows

from bertnpu_runtime import BackendUnavailableError, BundleError, SentenceEncoder
from bertnpu_runtime.backends.npu import NpuEncoder
from bertnpu_runtime.bundle import NpuSpec
from bertnpu_runtime.options import NpuOptions
from bertnpu_runtime.testing import FakeNpu, bundle_with_placeholder_mxq

ALL_MODES = ("single", "multi", "global4", "global8")
TEXTS = [f"sentence number {i} about a {'big ' * (i % 5)}dog in the park" for i in range(30)]
WHOLE_MODEL = {
    "graph": "model",
    "compiled_inputs": ["input_ids", "token_type_ids", "attention_mask"],
    "mask_input": "auto",
}


@pytest.fixture(scope="module")
def expected(tiny_bundle):
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        return reference.encode(TEXTS)


@pytest.fixture(scope="module")
def model_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with an .mxq described as compile writes the whole-model recipe's."""
    return bundle_with_placeholder_mxq(tiny_bundle, tmp_path_factory.mktemp("modes") / "bundle", npu=WHOLE_MODEL)


@pytest.mark.parametrize("pooler", [None, "first", "last"])
def test_the_hidden_states_are_taken_by_shape_among_the_outputs(model_bundle, expected, pooler):
    fake = FakeNpu(model_bundle / "encoder.onnx", pooler_output=pooler)
    with SentenceEncoder(model_bundle, backend="npu", npu_cores=2, qbruntime_module=fake) as encoder:
        assert cosine_rows(encoder.encode(TEXTS), expected).min() >= 0.99999


def test_an_mxq_without_a_hidden_state_output_is_refused(tiny_bundle, tmp_path):
    fake = FakeNpu(tiny_bundle / "encoder.onnx", hidden_size=None)
    fake.output_shapes = lambda width: [(1, 1, fake.hidden_size)]  # the pooler alone
    mxq = tmp_path / "model.mxq"
    mxq.write_bytes(b"x")
    with pytest.raises(BundleError, match=r"none is the last hidden state \(1, -1, 32\)"):
        NpuEncoder(mxq, NpuSpec("auto", "model"), 32, NpuOptions(qbruntime_module=fake))


@pytest.mark.parametrize("mxq_mask", [None, "keep"])
def test_the_mask_input_is_read_from_the_mxq(model_bundle, expected, mxq_mask):
    """mask_input "auto": one input runs each sentence unpadded; a second one is the 0/1 keep mask
    and sentences are padded to the static widths."""
    variants = (-1,) if mxq_mask is None else (8, 16, 48)
    fake = FakeNpu(model_bundle / "encoder.onnx", mask_input=mxq_mask, variants=variants)
    with SentenceEncoder(model_bundle, backend="npu", npu_cores=2, qbruntime_module=fake) as encoder:
        assert encoder.pipeline.backend.npu_spec.mask_input == mxq_mask
        assert cosine_rows(encoder.encode(TEXTS), expected).min() >= 0.99999
    widths = {call.shapes[0][-2] for call in fake.calls}
    assert widths <= {8, 16, 48} if mxq_mask else len(widths) > 3
    assert all(len(call.shapes) == (2 if mxq_mask else 1) for call in fake.calls)


def test_a_recorded_mask_that_the_mxq_lacks_is_an_error(tiny_bundle, tmp_path):
    bundle = bundle_with_placeholder_mxq(tiny_bundle, tmp_path / "b", npu={"graph": "model", "mask_input": "keep"})
    with pytest.raises(BundleError, match=r"variant 0 has 1 inputs .*npu.mask_input='keep' means 2"):
        SentenceEncoder(bundle, backend="npu", qbruntime_module=FakeNpu(bundle / "encoder.onnx"))


def test_one_sentence_per_call_by_default(model_bundle, expected, caplog):
    fake = FakeNpu(model_bundle / "encoder.onnx")  # max_batch=1, like the runtime binary
    with SentenceEncoder(model_bundle, backend="npu", qbruntime_module=fake) as encoder:
        assert cosine_rows(encoder.encode(TEXTS), expected).min() >= 0.99999
    assert len(fake.calls) == len(TEXTS) and all(len(call.shapes[0]) == 3 for call in fake.calls)
    assert "refused" not in caplog.text  # no 4-D call was tried


@pytest.mark.parametrize(
    ("mode", "models", "grouped"),
    [("single", 8, False), ("multi", 2, True), ("global4", 2, False), ("global8", 1, False)],
)
def test_each_core_mode(model_bundle, expected, mode, models, grouped):
    fake = FakeNpu(model_bundle / "encoder.onnx", core_modes=ALL_MODES)
    with SentenceEncoder(model_bundle, backend="npu", npu_core_mode=mode, qbruntime_module=fake) as encoder:
        assert cosine_rows(encoder.encode(TEXTS, batch_size=8), expected).min() >= 0.99999
        assert fake.busy_cores() == set(fake.all_cores())
        assert len(encoder.npu_cores_in_service) == models
    launched = [m for m in fake.models if m.disposed]
    assert len(launched) == models and all(m.get_core_mode().name.lower() == mode for m in launched)
    assert any(call.sentences > 1 for call in fake.calls) == grouped
    assert fake.busy_cores() == set()


def test_a_mode_the_mxq_was_not_compiled_for(model_bundle):
    fake = FakeNpu(model_bundle / "encoder.onnx")  # compiled for single-core mode only
    with pytest.raises(
        BackendUnavailableError,
        match=r"not compiled for multi-core mode \(Model_MXQAndModelConfigNotMatch occurred\.\).*--inference-scheme multi",
    ):
        SentenceEncoder(model_bundle, backend="npu", npu_core_mode="multi", qbruntime_module=fake)
    assert fake.busy_cores() == set()


def test_the_recorded_scheme_is_checked_before_launch(tiny_bundle, tmp_path):
    bundle = bundle_with_placeholder_mxq(tiny_bundle, tmp_path / "b", npu={**WHOLE_MODEL, "inference_scheme": "single"})
    fake = FakeNpu(bundle / "encoder.onnx", core_modes=ALL_MODES)
    with pytest.raises(BackendUnavailableError, match="compiled with inference_scheme 'single'"):
        SentenceEncoder(bundle, backend="npu", npu_core_mode="global8", qbruntime_module=fake)
    assert fake.models == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"npu_core_mode": "global16"}, "npu core mode must be one of"),
        ({"npu_core_mode": "multi", "npu_cores": 2}, "npu_cores chooses the cores of single-core mode"),
    ],
)
def test_bad_core_mode_options(model_bundle, kwargs, message):
    fake = FakeNpu(model_bundle / "encoder.onnx", core_modes=ALL_MODES)
    with pytest.raises(ValueError, match=message):
        SentenceEncoder(model_bundle, backend="npu", qbruntime_module=fake, **kwargs)


def test_cluster_modes_need_an_aries_card(model_bundle):
    fake = FakeNpu(model_bundle / "encoder.onnx", device_name="regulus-ra", num_cores=1, core_modes=ALL_MODES)
    with pytest.raises(ValueError, match=r"core mode 'global4' needs an ARIES card .* has 1 core"):
        SentenceEncoder(model_bundle, backend="npu", npu_core_mode="global4", qbruntime_module=fake)


def test_a_board_is_opened_by_name(model_bundle, expected):
    fake = FakeNpu(model_bundle / "encoder.onnx")
    with SentenceEncoder(
        model_bundle, backend="npu", npu_device_name="aries", npu_cores=1, qbruntime_module=fake
    ) as encoder:
        assert cosine_rows(encoder.encode(TEXTS), expected).min() >= 0.99999
    with pytest.raises(BackendUnavailableError, match=r"device_name='regulus', dev_no=0.*Acc_DeviceNotFound"):
        SentenceEncoder(model_bundle, backend="npu", npu_device_name="regulus", qbruntime_module=fake)


def test_a_board_name_without_a_card_is_driver_not_initialized_as_in_qbruntime():
    import qbruntime

    qbruntime.set_log_level(qbruntime.LogLevel.Off)
    fake = FakeNpu(hidden_size=32, num_devices=0)
    for name, code in (
        ("aries-rb", "Driver_NotInitialized"),
        ("regulus-rb", "Driver_NotInitialized"),
        ("aries", "Acc_DeviceNotFound"),
    ):
        for runtime in (qbruntime, fake):
            with pytest.raises(runtime.QbRuntimeError, match=code):
                runtime.Accelerator(name)


def test_a_trace_of_the_encoders_calls(model_bundle, tmp_path):
    import json

    fake = FakeNpu(model_bundle / "encoder.onnx")
    trace = tmp_path / "npu-trace.json"
    with SentenceEncoder(
        model_bundle, backend="npu", npu_cores=2, npu_trace_path=trace, qbruntime_module=fake
    ) as encoder:
        encoder.encode(TEXTS[:5])
        assert not fake.start_tracing_events(str(tmp_path / "second.json"))  # one trace at a time, as in qbruntime
    events = json.loads(trace.read_text())["traceEvents"]
    assert len(events) == 5 and all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
    assert fake.start_tracing_events(str(tmp_path / "next.json"))  # close() stopped it
    fake.stop_tracing_events()


def test_a_trace_into_a_missing_folder_is_refused(model_bundle, tmp_path):
    fake = FakeNpu(model_bundle / "encoder.onnx")
    with pytest.raises(ValueError, match="its folder does not exist"):
        SentenceEncoder(
            model_bundle, backend="npu", npu_trace_path=tmp_path / "nowhere" / "t.json", qbruntime_module=fake
        )
    assert fake.busy_cores() == set() and fake.start_tracing_events(str(tmp_path / "ok.json"))


@pytest.fixture(scope="module")
def bundles_by_board(tiny_bundle, tmp_path_factory):
    """A placeholder-.mxq bundle recorded as compiled for each board."""
    root = tmp_path_factory.mktemp("boards")
    return {
        board: bundle_with_placeholder_mxq(tiny_bundle, root / board, {"target_device": board, "graph": "encoder"})
        for board in ("aries-rb", "regulus-rb")
    }


@pytest.mark.parametrize(("board", "cores"), [("aries-rb", 8), ("regulus-rb", 1)])
def test_the_runtime_opens_the_board_the_mxq_was_compiled_for(bundles_by_board, tiny_bundle, board, cores):
    fake = FakeNpu(bundles_by_board[board] / "encoder.onnx", device_name=board, num_cores=cores)
    opened = []
    accelerator = fake.Accelerator
    fake.Accelerator = lambda *args, **kwargs: opened.append(kwargs) or accelerator(*args, **kwargs)
    with SentenceEncoder(bundles_by_board[board], backend="npu", qbruntime_module=fake) as encoder:
        vectors = encoder.encode(["a dog runs in the park", "a cat sleeps"])
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        np.testing.assert_allclose(vectors, reference.encode(["a dog runs in the park", "a cat sleeps"]), atol=1e-5)
    assert opened == [{"device_name": board, "dev_no": 0}]


@pytest.mark.parametrize(("compiled_for", "present"), [("aries-rb", "regulus-rb"), ("regulus-rb", "aries-rb")])
def test_a_card_of_the_other_kind_is_named_with_the_flag_to_use(bundles_by_board, compiled_for, present):
    fake = FakeNpu(bundles_by_board[compiled_for] / "encoder.onnx", device_name=present)
    with pytest.raises(BackendUnavailableError) as error:
        SentenceEncoder(bundles_by_board[compiled_for], backend="npu", qbruntime_module=fake)
    message = str(error.value)
    assert "\n" not in message
    assert f"compiled for {compiled_for}" in message and f"the NPU here is {present}" in message
    assert f"--target-device {present}`" in message


def test_a_named_device_overrides_the_bundles_board(bundles_by_board):
    fake = FakeNpu(bundles_by_board["aries-rb"] / "encoder.onnx", device_name="aries-rb")
    with SentenceEncoder(
        bundles_by_board["aries-rb"], backend="npu", npu_device_name="aries", npu_cores=1, qbruntime_module=fake
    ) as encoder:
        assert encoder.encode("named by the caller").shape == (encoder.dim,)
