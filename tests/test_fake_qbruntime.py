"""The qbruntime test double accepts and rejects what the real qbruntime 1.5 does.

The real wheel is installed here without a card: its pure-Python shape rules, its ModelConfig and
its no-device / missing-file errors can be run, and the fake is compared with them directly.
"""

import threading
import time

import numpy as np
import pytest
import qbruntime
from qbruntime.model import _find_memory_format as real_find_memory_format
from qbruntime.model import _is_valid_shape as real_is_valid_shape

from bertnpu_runtime.backends.onnx import OnnxEncoder
from bertnpu_runtime.testing import FakeNpu
from bertnpu_runtime.testing.fake_qbruntime import _find_memory_format, _is_valid_shape

HIDDEN = 32


@pytest.fixture(scope="module")
def encoder_onnx(tiny_bundle):
    return tiny_bundle / "encoder.onnx"


@pytest.fixture
def mxq(tmp_path):
    """The fake reads no .mxq contents, but like the real runtime it needs the file to exist."""
    path = tmp_path / "model.mxq"
    path.write_bytes(b"fake mxq")
    return path


@pytest.fixture(autouse=True, scope="module")
def quiet_real_runtime():
    qbruntime.set_log_level(qbruntime.LogLevel.Off)


def launched(fake, mxq, cluster=0, core=0):
    config = fake.ModelConfig()
    assert config.set_single_core_mode(None, [fake.CoreId(fake.Cluster(cluster), fake.Core(core))])
    model = fake.Model(str(mxq), config)
    model.launch(fake.Accelerator(dev_no=0))
    return model


def rows(seq, hidden=HIDDEN, seed=0):
    return np.random.default_rng(seed).standard_normal((1, seq, hidden)).astype(np.float32)


# --- shape rules -----------------------------------------------------------------------------------


def test_is_valid_shape_agrees_with_qbruntime_on_random_shapes():
    rng = np.random.default_rng(0)
    dims = [-8, -4, -2, -1, 1, 2, 3, 4, 6, 8, 12, 32]
    checked = accepted = 0
    for _ in range(20000):
        shape = tuple(int(d) for d in rng.choice(dims, size=3))
        rank = int(rng.integers(1, 6))
        input_shape = tuple(int(abs(d)) * int(rng.integers(0, 4)) for d in rng.choice(dims, size=rank))
        expected = real_is_valid_shape(input_shape, shape)
        assert _is_valid_shape(input_shape, shape) == expected, (input_shape, shape)
        checked += 1
        accepted += expected
    assert checked == 20000 and 100 < accepted < checked  # both outcomes were exercised


def test_find_memory_format_agrees_with_qbruntime():
    rng = np.random.default_rng(1)
    model_shapes = [[(1, -1, HIDDEN)], [(1, 8, HIDDEN)], [(1, 8, HIDDEN), (1, 8, 1)], [(1, -4, HIDDEN), (1, -4, 1)]]
    candidates = [
        (1, 8, HIDDEN),
        (3, 1, 8, HIDDEN),
        (HIDDEN, 1, 8),
        (8, HIDDEN),
        (1, 8, 1),
        (2, 1, 8, 1),
        (1, 6, HIDDEN),
    ]
    for _ in range(2000):
        shapes = model_shapes[rng.integers(len(model_shapes))]
        inputs = [
            np.empty(candidates[i], np.float32) for i in rng.integers(len(candidates), size=int(rng.integers(1, 3)))
        ]
        assert _find_memory_format(inputs, shapes) == real_find_memory_format(inputs, shapes), (
            [a.shape for a in inputs],
            shapes,
        )


@pytest.mark.parametrize(
    "variants, mask_input, shapes",
    [
        ([-1], None, [(7, HIDDEN)]),  # rank 2: (seq, hidden)
        ([-1], None, [(2, 7, HIDDEN)]),  # H != 1
        ([-1], None, [(1, 7, HIDDEN + 1)]),  # wrong C
        ([-1], None, [(1, 7, HIDDEN), (1, 7, 1)]),  # a mask the model does not have
        ([-4], None, [(1, 6, HIDDEN)]),  # not a multiple of 4
        ([8, 16], None, [(1, 12, HIDDEN)]),  # no static variant of that length
        ([8], "keep", [(1, 8, HIDDEN)]),  # mask missing
        ([8], "keep", [(1, 8, HIDDEN), (1, 4, 1)]),  # mask of the wrong length
        ([8], "keep", [(1, 8, HIDDEN), (1, 8, 2)]),  # mask with C != 1
    ],
)
def test_rejects_shapes_the_runtime_rejects(mxq, variants, mask_input, shapes):
    fake = FakeNpu(hidden_size=HIDDEN, variants=variants, mask_input=mask_input)
    model = launched(fake, mxq)
    inputs = [np.zeros(s, np.float32) for s in shapes]
    for idx in range(model.get_num_model_variants()):  # the real rule rejects it for every variant too
        assert real_find_memory_format(inputs, model.get_model_variant_handle(idx).get_model_input_shape()) is None
    with pytest.raises(ValueError, match=r"^Input shape is invalid\.$"):
        model.infer(inputs)
    assert fake.calls == []


def test_accepts_3d_and_4d_and_matches_variants_in_order(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, variants=[8, -4], mask_input=None, max_width=16, max_batch=None)
    model = launched(fake, mxq)
    assert model.infer([np.zeros((1, 8, HIDDEN), np.float32)])[0].shape == (1, 8, HIDDEN)
    assert model.infer(np.zeros((3, 1, 12, HIDDEN), np.float32))[0].shape == (3, 1, 12, HIDDEN)
    assert [c.shapes for c in fake.calls] == [((1, 8, HIDDEN),), ((3, 1, 12, HIDDEN),)]


def test_variable_length_beyond_max_width_is_a_runtime_error(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, variants=[-1], max_width=16)
    model = launched(fake, mxq)
    model.infer([np.zeros((1, 16, HIDDEN), np.float32)])
    with pytest.raises(fake.QbRuntimeError, match="Model_ShapeMismatched"):
        model.infer([np.zeros((1, 17, HIDDEN), np.float32)])


def test_max_batch_refuses_larger_4d_calls(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, max_batch=2)
    model = launched(fake, mxq)
    assert model.infer(np.zeros((2, 1, 5, HIDDEN), np.float32))[0].shape == (2, 1, 5, HIDDEN)
    assert model.infer(np.zeros((1, 5, HIDDEN), np.float32))[0].shape == (1, 5, HIDDEN)
    with pytest.raises(fake.QbRuntimeError, match="Model_ShapeMismatched"):
        model.infer(np.zeros((3, 1, 5, HIDDEN), np.float32))
    assert [c.sentences for c in fake.calls] == [2, 1]


def test_max_width_is_reported_per_variant(mxq):
    model = FakeNpu(hidden_size=HIDDEN, variants=[-1, 64], max_width=128).Model(str(mxq))
    assert [model.get_model_variant_handle(i).get_input_buffer_info()[0].max_width for i in range(2)] == [128, 64]
    with pytest.raises(RuntimeError, match="Model_InvalidVariantIdx"):
        model.get_model_variant_handle(2)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int8, np.uint8, np.int64])
def test_rejects_other_dtypes_than_float32(mxq, dtype):
    model = launched(FakeNpu(hidden_size=HIDDEN), mxq)
    with pytest.raises(TypeError, match="pass float32"):
        model.infer([np.zeros((1, 5, HIDDEN), dtype)])


def test_non_contiguous_input_is_copied_like_qbruntime_does(encoder_onnx, mxq):
    model = launched(FakeNpu(encoder_onnx), mxq)
    x = np.asfortranarray(rows(6))
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(model.infer([x])[0], model.infer([np.ascontiguousarray(x)])[0])


# --- lifecycle and errors ----------------------------------------------------------------------------


def test_no_device_error_is_the_real_one():
    with pytest.raises(qbruntime.QbRuntimeError) as real:
        qbruntime.Accelerator(dev_no=0)
    fake = FakeNpu(hidden_size=HIDDEN, num_devices=0)
    assert fake.get_available_devices() == qbruntime.get_available_devices() == []
    with pytest.raises(fake.QbRuntimeError) as faked:
        fake.Accelerator(dev_no=0)
    assert str(faked.value) == str(real.value) and "Acc_DeviceNotFound" in str(faked.value)
    assert type(faked.value).__name__ == type(real.value).__name__ and isinstance(faked.value, RuntimeError)


def test_device_numbers_and_names():
    fake = FakeNpu(hidden_size=HIDDEN, num_devices=2)
    assert fake.Accelerator(1).dev_no == 1 and fake.Accelerator("aries", 0).get_device_name() == "aries-rb"
    with pytest.raises(fake.QbRuntimeError, match="Acc_DeviceNotFound"):
        fake.Accelerator(dev_no=2)
    with pytest.raises(fake.QbRuntimeError, match="Acc_DeviceNotFound"):
        fake.Accelerator("regulus")
    with pytest.raises(fake.QbRuntimeError, match="Acc_UnknownDevice"):
        fake.Accelerator("bogus")


def test_missing_mxq_error_is_the_real_one(tmp_path):
    missing = str(tmp_path / "absent.mxq")
    with pytest.raises(qbruntime.QbRuntimeError) as real:
        qbruntime.Model(missing)
    with pytest.raises(RuntimeError) as faked:
        FakeNpu(hidden_size=HIDDEN).Model(missing)
    assert str(faked.value) == str(real.value) and "Model_FailedToLoadMXQ" in str(faked.value)


def test_infer_before_launch_and_after_dispose(mxq):
    fake = FakeNpu(hidden_size=HIDDEN)
    model = fake.Model(str(mxq))
    with pytest.raises(fake.QbRuntimeError, match="Model_NotLaunched"):
        model.infer([rows(4)])
    model.launch(fake.Accelerator())
    model.infer([rows(4)])
    with pytest.raises(fake.QbRuntimeError, match="Model_AlreadyLaunched"):
        model.launch(fake.Accelerator())
    model.dispose()
    with pytest.raises(fake.QbRuntimeError, match="Model_NotLaunched"):
        model.infer([rows(4)])
    assert len(fake.calls) == 1


def test_a_core_in_use_cannot_be_launched_again_until_disposed(mxq):
    fake = FakeNpu(hidden_size=HIDDEN)
    first = launched(fake, mxq, 1, 2)
    assert fake.busy_cores() == {(1, 2)}
    with pytest.raises(fake.QbRuntimeError, match="Acc_CoreAlreadyInUse"):
        launched(fake, mxq, 1, 2)
    launched(fake, mxq, 1, 3)
    first.dispose()
    assert fake.busy_cores() == {(1, 3)}
    assert launched(fake, mxq, 1, 2).get_target_cores() == [fake.CoreId(fake.Cluster.Cluster1, fake.Core.Core2)]


def test_auto_mode_takes_every_core(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, num_cores=8)
    fake.Model(str(mxq)).launch(fake.Accelerator())
    assert fake.busy_cores() == set(fake.all_cores()) and len(fake.all_cores()) == 8
    with pytest.raises(fake.QbRuntimeError, match="Acc_CoreAlreadyInUse"):
        launched(fake, mxq, 0, 0)


@pytest.mark.parametrize("mode", ["set_multi_core_mode", "set_global4_core_mode", "set_global8_core_mode"])
def test_core_modes_the_single_core_mxq_lacks_are_rejected(mxq, mode):
    fake = FakeNpu(hidden_size=HIDDEN)
    config = fake.ModelConfig()
    getattr(config, mode)()
    with pytest.raises(fake.QbRuntimeError, match="Model_MXQAndModelConfigNotMatch"):
        fake.Model(str(mxq), config)


@pytest.mark.parametrize(
    "cluster, core", [("Cluster0", "Core0"), ("Cluster1", "Core3"), ("Cluster0", "GlobalCore"), ("Cluster1", "All")]
)
def test_model_config_single_core_mode_matches_the_real_one(cluster, core):
    fake = FakeNpu(hidden_size=HIDDEN)
    real_config, fake_config = qbruntime.ModelConfig(), fake.ModelConfig()
    real_ok = real_config.set_single_core_mode(
        None, [qbruntime.CoreId(qbruntime.Cluster[cluster], qbruntime.Core[core])]
    )
    fake_ok = fake_config.set_single_core_mode(None, [fake.CoreId(fake.Cluster[cluster], fake.Core[core])])
    assert fake_ok == real_ok
    assert fake_config.get_core_mode().name == real_config.get_core_mode().name
    assert [(c.cluster.name, c.core.name) for c in fake_config.get_core_ids()] == [
        (c.cluster.name, c.core.name) for c in real_config.get_core_ids()
    ]
    with pytest.raises(ValueError, match="needs either"):
        fake_config.set_single_core_mode()


def test_set_log_level_is_recorded():
    fake = FakeNpu(hidden_size=HIDDEN)
    fake.set_log_level(fake.LogLevel.Off)
    assert fake.log_level == fake.LogLevel.Off


# --- compute -----------------------------------------------------------------------------------------


def test_maskless_model_computes_the_onnx_encoder_on_unpadded_rows(encoder_onnx, mxq):
    model = launched(FakeNpu(encoder_onnx), mxq)
    x = rows(9)
    expected = OnnxEncoder(encoder_onnx).run(x, np.ones((1, 9), np.int64))
    (out,) = model.infer([x])
    assert out.shape == (1, 9, HIDDEN) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("mask_input, pad_value", [("keep", 0.0), ("additive", -10000.0)])
def test_masked_model_converts_the_mask(encoder_onnx, mxq, mask_input, pad_value):
    model = launched(FakeNpu(encoder_onnx, variants=[8], mask_input=mask_input), mxq)
    x = rows(8)
    keep = np.arange(8) < 5
    mask = np.where(keep, 1.0 if mask_input == "keep" else 0.0, pad_value).astype(np.float32).reshape(1, 8, 1)
    (out,) = model.infer([x, mask])
    expected = OnnxEncoder(encoder_onnx).run(x, keep[None].astype(np.int64))
    np.testing.assert_allclose(out[:, :5], expected[:, :5], atol=1e-5)


def test_latency_model_overlaps_across_cores_and_returns_zeros(mxq):
    fake = FakeNpu(hidden_size=HIDDEN, latency_s=lambda seq: 0.01 * seq, max_batch=None)
    models = [launched(fake, mxq, 0, core) for core in range(4)]
    x = np.ones((2, 1, 10, HIDDEN), np.float32)  # 2 sentences x 0.1 s
    outputs = []
    threads = [threading.Thread(target=lambda m=m: outputs.append(m.infer([x])[0])) for m in models]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert 0.2 <= wall < 0.6  # four cores at once, not 0.8 s one after another
    assert all(np.array_equal(o, np.zeros_like(x)) for o in outputs)
    assert sorted(c.core for c in fake.calls) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert all(c.end - c.start >= 0.2 for c in fake.calls)


def test_latency_shorter_than_making_the_output_just_returns(encoder_onnx, mxq):
    """The modelled latency is the call's whole duration, output included; when computing the output
    already took longer, there is nothing left to sleep (time.sleep would reject a negative time)."""
    fake = FakeNpu(encoder_onnx, latency_s=1e-9)
    (out,) = launched(fake, mxq).infer(rows(5))
    assert out.shape == (1, 5, HIDDEN) and np.abs(out).sum() > 0
    (call,) = fake.calls
    assert call.end - call.start > 1e-9 * call.sentences


def test_chw_input_is_run_like_qbruntime_does(encoder_onnx, mxq):
    """qbruntime also accepts (C, H, W) when only that layout fits, and answers in the same layout."""
    model = launched(FakeNpu(encoder_onnx), mxq)
    x = rows(5)  # (1, 5, 32) HWC
    chw = np.ascontiguousarray(x.transpose(2, 0, 1))  # (32, 1, 5)
    assert real_find_memory_format([chw], model.get_model_input_shape()) == (False, True)
    (out,) = model.infer([chw])
    np.testing.assert_allclose(out.transpose(1, 2, 0), model.infer([x])[0], atol=1e-6)
