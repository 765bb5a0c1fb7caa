"""compile.int8: static int8 (QDQ) encoder on the tiny model's bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from bertnpu_runtime.backends.onnx import OnnxEncoder
from bertnpu_runtime.bundle import CALIB_DIR, ONNX_ENCODER_FILE, TOKENIZER_FILE, Bundle
from bertnpu_runtime.embedding import EmbeddingLayer
from bertnpu_runtime.encoder_graph import encoder_feed, takes_packed
from bertnpu_runtime.pooling import l2_normalize, pool
from bertnpu_runtime.tokenize import Tokenizer
from compile.calibration import calibration_files
from compile.errors import CompileError
from compile.int8 import DEFAULT_OPTIONS, MATMUL_ROLES, matmul_roles, quantize_encoder
from compile.int8_smooth import smooth_matmul_inputs

SENTENCES = [
    "A man is playing a guitar.",
    "ok",
    "The president said talks with iran would continue after the court ruling yesterday evening.",
    "Two dogs run in the snow",
    "a cat",
]


@pytest.fixture(scope="module")
def int8_model(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "encoder.int8.onnx"
    info = quantize_encoder(tiny_bundle / ONNX_ENCODER_FILE, tiny_bundle / CALIB_DIR, out)
    return out, info


def _inputs(bundle_dir: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    bundle = Bundle(bundle_dir)
    tokens = Tokenizer(bundle.path(TOKENIZER_FILE), bundle.manifest.max_seq_length).encode(texts)
    return EmbeddingLayer(bundle.load_embeddings())(tokens.input_ids), tokens.attention_mask


def test_int8_model_keeps_the_encoder_interface(tiny_bundle: Path, int8_model: tuple[Path, dict]):
    def signature(path: Path) -> list[tuple]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [(a.name, a.type, len(a.shape)) for a in (*session.get_inputs(), *session.get_outputs())]

    assert signature(int8_model[0]) == signature(tiny_bundle / ONNX_ENCODER_FILE)
    hidden, mask = _inputs(tiny_bundle, SENTENCES)
    output = OnnxEncoder(int8_model[0], num_threads=1).run(hidden, mask)
    assert output.shape == hidden.shape and output.dtype == np.float32


def test_int8_model_is_quantized_per_channel(int8_model: tuple[Path, dict]):
    graph = onnx.load(str(int8_model[0])).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight_dqs = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and initializers.get(n.input[0]) is not None
        and initializers[n.input[0]].ndim == 2
    ]
    assert len(weight_dqs) == int8_model[1]["matmuls"]["quantized"] > 0
    for node in weight_dqs:
        weight, scale = initializers[node.input[0]], initializers[node.input[1]]
        assert weight.dtype == np.int8
        assert scale.shape == (weight.shape[1],), "one scale per output channel"
    assert not [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"], (
        "activations must be statically quantized"
    )


def test_int8_output_is_close_to_float32(tiny_bundle: Path, int8_model: tuple[Path, dict]):
    hidden, mask = _inputs(tiny_bundle, SENTENCES)
    float_vectors = l2_normalize(pool(OnnxEncoder(tiny_bundle / ONNX_ENCODER_FILE).run(hidden, mask), mask))
    int8_vectors = l2_normalize(pool(OnnxEncoder(int8_model[0]).run(hidden, mask), mask))
    cosine = np.einsum("bh,bh->b", float_vectors, int8_vectors)
    assert cosine.min() > 0.995, cosine
    assert not np.array_equal(float_vectors, int8_vectors), "nothing was quantized"


def test_info_records_how_the_model_was_made(tiny_bundle: Path, int8_model: tuple[Path, dict]):
    info = int8_model[1]
    assert info["format"] == "QDQ"
    assert info["onnxruntime_version"] == ort.__version__
    assert info["weights"] == {
        "type": "int8",
        "symmetric": True,
        "per_channel": True,
        "channel_axis": 1,
        "reduce_range": DEFAULT_OPTIONS.reduce_range,
    }
    assert info["activations"]["calibration"] == "percentile"
    assert info["activations"]["percentile"] == DEFAULT_OPTIONS.percentile
    assert info["calibration_samples"] == len(list((tiny_bundle / CALIB_DIR).glob("*.npy")))
    roles = matmul_roles(onnx.load(str(tiny_bundle / ONNX_ENCODER_FILE)))
    assert info["matmuls"]["total"] == len(roles)
    assert info["matmuls"]["quantized"] + len(info["nodes_excluded"]) == len(roles)
    assert sum(info["matmuls"]["by_role"].values()) == len(roles)
    assert set(info["matmuls"]["by_role"]) == set(MATMUL_ROLES)
    # Q, K, V share one smoothed input; attention output, FFN up and FFN down have one each.
    layers = Bundle(tiny_bundle).manifest.num_layers
    assert info["smoothquant"] == {"alpha": DEFAULT_OPTIONS.smooth_alpha, "tensors_smoothed": 4 * layers}


def test_matmul_roles_per_layer(tiny_bundle: Path):
    manifest = Bundle(tiny_bundle).manifest
    roles = list(matmul_roles(onnx.load(str(tiny_bundle / ONNX_ENCODER_FILE))).values())
    per_layer = {"qkv": 3, "attention_output": 1, "ffn_up": 1, "ffn_down": 1, "attention": 2}
    for role, count in per_layer.items():
        layers = [layer for r, layer in roles if r == role]
        assert sorted(layers) == sorted(list(range(manifest.num_layers)) * count), role


def test_smoothing_keeps_the_float_function(tiny_bundle: Path):
    model = onnx.load(str(tiny_bundle / ONNX_ENCODER_FILE))
    weight_matmuls = [name for name, (role, _) in matmul_roles(model).items() if role != "attention"]
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    count = smooth_matmul_inputs(smoothed, weight_matmuls, calibration_files(tiny_bundle / CALIB_DIR), alpha=0.75)
    assert count > 0
    assert (
        sum(n.op_type == "Mul" for n in smoothed.graph.node)
        == sum(n.op_type == "Mul" for n in model.graph.node) + count
    )
    hidden, mask = _inputs(tiny_bundle, SENTENCES)

    def run(m: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, encoder_feed(hidden, mask, takes_packed(session)))[0]

    before, after = run(model), run(smoothed)
    np.testing.assert_allclose(after[mask == 1], before[mask == 1], rtol=1e-4, atol=1e-4)


def test_vector_does_not_depend_on_batch_composition(tiny_bundle: Path, int8_model: tuple[Path, dict]):
    """Static ranges: a sentence alone and inside a padded batch of mixed lengths gives the same vector.

    (Dynamic quantization would not: its ranges come from the whole batch, padding included.)"""
    encoder = OnnxEncoder(int8_model[0], num_threads=1)
    hidden, mask = _inputs(tiny_bundle, SENTENCES)
    batched = l2_normalize(pool(encoder.run(hidden, mask), mask))
    reversed_order = l2_normalize(pool(encoder.run(hidden[::-1].copy(), mask[::-1].copy()), mask[::-1]))[::-1]
    for row, text in enumerate(SENTENCES):
        alone_hidden, alone_mask = _inputs(tiny_bundle, [text])
        alone = l2_normalize(pool(encoder.run(alone_hidden, alone_mask), alone_mask))[0]
        # Float kernels may block differently for another batch shape: allow float32 rounding, far
        # below one int8 step of the tiny model's activations.
        np.testing.assert_allclose(batched[row], alone, atol=2e-6, err_msg=text)
        np.testing.assert_allclose(reversed_order[row], alone, atol=2e-6, err_msg=text)


@pytest.mark.parametrize("problem", ["missing", "empty", "bad-shape"])
def test_bad_calibration_folder_is_named(tiny_bundle: Path, tmp_path: Path, problem: str):
    calib = tmp_path / "calib"
    named = calib
    if problem != "missing":
        calib.mkdir()
    if problem == "bad-shape":
        shutil.copy(next((tiny_bundle / CALIB_DIR).glob("*.npy")), calib / "0000.npy")
        named = calib / "0001.npy"
        np.save(named, np.zeros((3, 32), dtype=np.float32))
    with pytest.raises(CompileError, match=str(named)):
        quantize_encoder(tiny_bundle / ONNX_ENCODER_FILE, calib, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_compile_int8_then_encode_with_precision_int8(tiny_model_dir: Path, tmp_path: Path):
    """End to end: build_bundle(int8=True) really quantizes, and the runtime serves it only when asked."""
    from bertnpu_runtime import SentenceEncoder
    from compile import build_bundle

    bundle = build_bundle(str(tiny_model_dir), tmp_path / "b", calib_samples=8, int8=True)
    assert Bundle(bundle).manifest.int8["weights"]["per_channel"] is True
    texts = ["A man is playing a guitar.", "Hi", "", "Two dogs run through a field of tall grass."]
    with (
        SentenceEncoder(bundle, backend="onnx") as fp32,
        SentenceEncoder(bundle, backend="onnx", encoder_precision="int8") as q,
    ):
        assert q.encoder_precision == "int8"
        reference, quantized = fp32.encode(texts), q.encode(texts)
        assert not np.allclose(quantized, reference, atol=1e-6)  # really the int8 graph
        cosine = np.sum(quantized * reference, axis=1) / (
            np.linalg.norm(quantized, axis=1) * np.linalg.norm(reference, axis=1)
        )
        assert cosine.min() > 0.99
        for batch_size in (1, 3):  # static ranges: a vector does not depend on its batch
            np.testing.assert_allclose(q.encode(texts, batch_size=batch_size), quantized, atol=1e-5)
