"""A missing, corrupt or mismatched bundle file gives an error that names the file."""

import shutil

import numpy as np
import pytest
from bundle_edits import rehash, rewrite_manifest, rewrite_tables, table

from bertnpu_runtime import BundleError, SentenceEncoder
from bertnpu_runtime.bundle import EMBEDDINGS_FILE, MANIFEST_FILE, TOKENIZER_FILE


def test_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="nowhere: bundle folder does not exist"):
        SentenceEncoder(tmp_path / "nowhere", backend="onnx")


def test_missing_manifest(bundle_copy):
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"bundle\.json: file is missing"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_manifest_not_json(bundle_copy):
    (bundle_copy / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(BundleError, match=r"bundle\.json: is not valid JSON"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_manifest_wrong_version(bundle_copy):
    rewrite_manifest(bundle_copy, format_version=99)
    with pytest.raises(BundleError, match="format_version 99"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_manifest_field_of_wrong_type(bundle_copy):
    rewrite_manifest(bundle_copy, hidden_size="32")
    with pytest.raises(BundleError, match='field "hidden_size" must be an integer'):
        SentenceEncoder(bundle_copy, backend="onnx")


@pytest.mark.parametrize("name", [EMBEDDINGS_FILE, TOKENIZER_FILE, "encoder.onnx"])
def test_missing_file(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=rf"{name}: file is missing"):
        SentenceEncoder(bundle_copy, backend="onnx")


@pytest.mark.parametrize("name", [EMBEDDINGS_FILE, TOKENIZER_FILE, "encoder.onnx"])
def test_corrupt_file_fails_its_hash(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}: SHA-256 .* does not match"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_truncated_npz_is_named_when_not_verifying(bundle_copy):
    path = bundle_copy / EMBEDDINGS_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match=rf"{EMBEDDINGS_FILE}: cannot be read"):
        SentenceEncoder(bundle_copy, backend="onnx", verify_bundle=False)


def test_embeddings_disagreeing_with_manifest(bundle_copy):
    rewrite_tables(bundle_copy, word_embeddings=table(bundle_copy, "word_embeddings")[:, :-1])
    with pytest.raises(BundleError, match=rf"{EMBEDDINGS_FILE}: position_embeddings must be \[rows, 31\]"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_embeddings_of_wrong_dtype(bundle_copy):
    rewrite_tables(bundle_copy, word_embeddings=table(bundle_copy, "word_embeddings").astype(np.float64))
    with pytest.raises(BundleError, match="word_embeddings must be float32, found float64"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_embeddings_missing_a_key(bundle_copy):
    rewrite_tables(bundle_copy, drop=("layer_norm_eps",))
    with pytest.raises(BundleError, match=r"missing arrays \['layer_norm_eps'\]"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_onnx_file_that_is_not_onnx(bundle_copy):
    (bundle_copy / "encoder.onnx").write_bytes(b"definitely not a protobuf")
    rehash(bundle_copy, "encoder.onnx")
    with pytest.raises(BundleError, match=r"encoder\.onnx: ONNX Runtime cannot load it"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_tokenizer_that_is_not_a_tokenizer(bundle_copy):
    (bundle_copy / TOKENIZER_FILE).write_text('{"hello": 1}')
    rehash(bundle_copy, TOKENIZER_FILE)
    with pytest.raises(BundleError, match=r"tokenizer\.json: cannot be loaded"):
        SentenceEncoder(bundle_copy, backend="onnx")


def test_mixed_bundle_file_from_another_model(bundle_copy, default_bundle):
    shutil.copy(default_bundle / EMBEDDINGS_FILE, bundle_copy / EMBEDDINGS_FILE)
    with pytest.raises(BundleError, match=rf"{EMBEDDINGS_FILE}: SHA-256"):
        SentenceEncoder(bundle_copy, backend="onnx")
    rehash(bundle_copy, EMBEDDINGS_FILE)  # even with a matching hash, the shapes disagree with bundle.json
    with pytest.raises(BundleError, match=rf"{EMBEDDINGS_FILE}: hidden size 384 disagrees with 32"):
        SentenceEncoder(bundle_copy, backend="onnx")
