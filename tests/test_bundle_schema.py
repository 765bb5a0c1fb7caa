"""bundle.json is checked against one schema, and the bundle's files against each other, at load:
a hostile or mixed-up bundle gives a BundleError naming the file and field, never a crash later."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
from bundle_edits import rehash, rewrite_manifest, rewrite_tables, table
from onnx import TensorProto, helper

from bertnpu_runtime import BundleError, EncoderOutputError, SentenceEncoder
from bertnpu_runtime.bundle import EMBEDDINGS_FILE, MANIFEST_FILE, ONNX_ENCODER_FILE, TOKENIZER_FILE, Bundle


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("npu", "x", 'field "npu" must be a JSON object or null'),
        ("npu", [1], 'field "npu" must be a JSON object or null'),
        ("npu", 5, 'field "npu" must be a JSON object or null'),
        ("int8", "yes", 'field "int8" must be a JSON object or null'),
        ("max_seq_length", 0, 'field "max_seq_length" must be between 2 and'),
        ("max_seq_length", -1, 'field "max_seq_length" must be between 2 and'),
        ("max_seq_length", 1, 'field "max_seq_length" must be between 2 and'),
        ("max_seq_length", 2.0, 'field "max_seq_length" must be an integer'),
        ("hidden_size", True, 'field "hidden_size" must be an integer'),
        ("vocab_size", 10**12, 'field "vocab_size" must be between 1 and'),
        ("layer_norm_eps", "1e-12", 'field "layer_norm_eps" must be a number'),
        ("layer_norm_eps", [1e-12], 'field "layer_norm_eps" must be a number'),
        ("layer_norm_eps", -1e-12, 'field "layer_norm_eps" must be a positive number below 1'),
        ("layer_norm_eps", float("nan"), 'field "layer_norm_eps" must be a positive number below 1'),
        ("layer_norm_eps", True, 'field "layer_norm_eps" must be a number'),
        ("format_version", True, "format_version True is not 1"),
        ("format_version", 1.0, "format_version 1.0 is not 1"),
        ("pooling", "bogus", "field \"pooling\" must be one of \\['mean', 'cls', 'max', .*\\], found 'bogus'"),
        ("normalize", "no", 'field "normalize" must be bool'),
    ],
)
def test_manifest_values_outside_the_schema(bundle_copy, name, value, message):
    rewrite_manifest(bundle_copy, **{name: value})
    with pytest.raises(BundleError, match=rf"bundle\.json: {message}"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_a_missing_field_is_named(bundle_copy):
    path = bundle_copy / MANIFEST_FILE
    data = json.loads(path.read_text())
    del data["pooling"]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match='field "pooling" is missing'):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_a_deeply_nested_manifest(bundle_copy):
    path = bundle_copy / MANIFEST_FILE
    text = path.read_text().rstrip().rstrip("}")
    path.write_text(text + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(BundleError, match=r"bundle\.json: is nested too deeply"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_embeddings_that_are_a_plain_npy(bundle_copy):
    path = bundle_copy / EMBEDDINGS_FILE
    word = table(bundle_copy, "word_embeddings")
    with open(path, "wb") as f:
        np.save(f, word)
    rehash(bundle_copy, EMBEDDINGS_FILE)
    with pytest.raises(BundleError, match=rf"{EMBEDDINGS_FILE}: cannot be read as a NumPy \.npz archive"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_an_npz_header_declaring_an_absurd_shape(bundle_copy):
    """The header alone is read first: a shape the archive cannot hold is refused, not allocated."""
    path = bundle_copy / EMBEDDINGS_FILE
    with np.load(path) as npz:
        arrays = dict(npz)
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w") as member:
                if key == "word_embeddings":
                    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40, 32)}
                    np.lib.format.write_array_header_1_0(member, header)
                    member.write(array.tobytes())
                else:
                    np.lib.format.write_array(member, array)
    rehash(bundle_copy, EMBEDDINGS_FILE)
    with pytest.raises(
        BundleError, match=r"word_embeddings declares shape \(1099511627776, 32\).*more than the archive holds"
    ):
        SentenceEncoder(bundle_copy, backend="onnx")


@pytest.mark.parametrize(
    ("eps", "message"),
    [
        (np.float64(1e-5), r"layer_norm_eps 1e-05 disagrees with layer_norm_eps 1e-12 in bundle\.json"),
        (np.float64(np.nan), "layer_norm_eps must be a positive number below 1, found nan"),
        (np.float64(-1.0), "layer_norm_eps must be a positive number below 1, found -1.0"),
        (np.array([1e-12, 1e-12]), r"layer_norm_eps must be one float \(shape \(\)\), found float64 \(2,\)"),
        (np.array("1e-12"), r"layer_norm_eps must be one float"),
    ],
)
def test_the_tables_eps_is_checked_against_the_manifest(bundle_copy, eps, message):
    assert json.loads((bundle_copy / MANIFEST_FILE).read_text())["layer_norm_eps"] == 1e-12
    rewrite_tables(bundle_copy, layer_norm_eps=eps)
    with pytest.raises(BundleError, match=rf"{EMBEDDINGS_FILE}: {message}"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_a_tokenizer_whose_ids_exceed_the_tables(bundle_copy):
    rewrite_tables(bundle_copy, word_embeddings=table(bundle_copy, "word_embeddings")[:50])
    rewrite_manifest(bundle_copy, vocab_size=50)
    with pytest.raises(
        BundleError, match=rf"{TOKENIZER_FILE}: produces token ids up to \d+, but {EMBEDDINGS_FILE} has 50 word"
    ):
        SentenceEncoder(bundle_copy, backend="onnx")


def identity_encoder(path, width):
    """An ONNX graph with the encoder's interface whose hidden states are `width` wide."""
    hidden = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, ["batch", "seq", width])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", width])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["hidden_states"], ["last_hidden_state"])], "g", [hidden, mask], [out]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_an_onnx_graph_of_another_width(bundle_copy):
    identity_encoder(bundle_copy / ONNX_ENCODER_FILE, 48)
    rehash(bundle_copy, ONNX_ENCODER_FILE)
    with pytest.raises(
        BundleError,
        match=rf"{ONNX_ENCODER_FILE}: input 'hidden_states' has shape \['batch', 'seq', 48\]; "
        r"expected \[tokens, 32\] or \[batch, seq, 32\]",
    ):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_an_onnx_graph_of_the_right_width_loads(bundle_copy):
    identity_encoder(bundle_copy / ONNX_ENCODER_FILE, 32)
    rehash(bundle_copy, ONNX_ENCODER_FILE)
    with SentenceEncoder(bundle_copy, backend="onnx") as encoder:
        assert encoder.encode(["a dog"]).shape == (1, 32)


class NanEncoder:
    """An encoder backend whose output holds NaN for one sentence of each batch."""

    def run(self, hidden, attention_mask):
        out = hidden.copy()
        out[-1] = np.nan
        return out


def test_nan_encoder_output_raises_naming_the_text(tiny_bundle):
    with (
        SentenceEncoder(tiny_bundle, backend=NanEncoder()) as encoder,
        pytest.raises(EncoderOutputError, match=r"NaN or infinite values for 1 text\(s\), first at index 2"),
    ):
        encoder.encode(["one", "two", "three"], batch_size=8)


@pytest.mark.parametrize("entry", ["../../outside.txt", "/etc/passwd", "calib/../../x", "a\\\\..\\\\b", ""])
def test_files_entries_must_stay_inside_the_bundle(bundle_copy, entry):
    data = json.loads((bundle_copy / "bundle.json").read_text())
    rewrite_manifest(bundle_copy, files={**data["files"], entry: {"sha256": "0" * 64}})
    with pytest.raises(BundleError, match="must be a path inside the bundle folder"):
        Bundle(bundle_copy)


@pytest.mark.parametrize("digest", ["g" * 64, "A" * 64, "0" * 63 + " "])
def test_hashes_must_be_hex(bundle_copy, digest):
    data = json.loads((bundle_copy / "bundle.json").read_text())
    rewrite_manifest(bundle_copy, files={**data["files"], "tokenizer.json": {"sha256": digest}})
    with pytest.raises(BundleError, match="64 hex digits"):
        Bundle(bundle_copy)


@pytest.mark.parametrize("key", ["word_embeddings", "position_embeddings", "layer_norm_weight"])
def test_non_finite_tables_are_named_at_load(bundle_copy, key):
    with np.load(bundle_copy / "embeddings.npz") as npz:
        broken = npz[key].copy()
    broken.flat[3] = np.nan
    rewrite_tables(bundle_copy, **{key: broken})
    with pytest.raises(BundleError, match=f"embeddings.npz: {key} holds NaN or infinite values"):
        SentenceEncoder(bundle_copy, backend="onnx")
