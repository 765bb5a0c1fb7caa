"""The model families people deploy, each compiled from a random model in sentence-transformers'
layout and compared with sentence-transformers on the same folder: BERT with XLM-R's Unigram
tokenizer (paraphrase-multilingual-MiniLM), RoBERTa (byte-level BPE), XLM-RoBERTa and CamemBERT
(Unigram), MPNet; on ONNX Runtime, on the NPU path (test double) and in the int8 preview."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import EMBEDDING_FAMILIES as FAMILIES
from vectors import cosine_rows

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.encoder_graph import takes_packed
from bertnpu_runtime.testing import FakeNpu, bundle_with_placeholder_mxq
from compile import CompileError, build_bundle

# English, French accents, Chinese, Korean, Arabic, emoji, and one text past max_seq_length.
TEXTS = [
    "A man is playing a guitar.",
    "Un homme joue de la guitare près du café.",
    "男人在弹吉他。",
    "남자가 기타를 치고 있다.",
    "رجل يعزف على الغيتار",
    "Crème brûlée, naïve façade 🎸🔥",
    "Two dogs run through a field. " * 12,
]
# docs/int8.md: the int8 preview's per-sentence cosine to float32 on the default model is >= 0.98;
# random tiny models quantize worse, so this only guards against a broken graph.
INT8_COSINE_FLOOR = 0.9


def reference(folder: Path):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sentence-transformers' deprecation notes about its own API
        return SentenceTransformer(str(folder), device="cpu")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_token_ids_and_vectors_match_sentence_transformers(family, family_models):
    folder, bundle = family_models[family]
    model = reference(folder)
    expected = model.encode(TEXTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = model.tokenize(TEXTS)
    with SentenceEncoder(bundle, backend="onnx") as encoder:
        tokens = encoder.tokenize(TEXTS)
        vectors = encoder.encode(TEXTS)
    for row, text in enumerate(TEXTS):
        theirs = features["input_ids"][row][features["attention_mask"][row].bool()].tolist()
        assert tokens.input_ids[row][: tokens.lengths[row]].tolist() == theirs, text
    assert cosine_rows(vectors, expected).min() >= 0.99999


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_encoder_graph_is_packed_but_for_mpnet(family, family_models):
    """BERT's and RoBERTa's layers run on the real tokens only (encoder_graph's packed form); MPNet's
    attention adds a relative position bias, so its graph stays padded. Vectors: the test above."""
    import onnxruntime as ort

    _, bundle = family_models[family]
    session = ort.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert takes_packed(session) == (family != "mpnet")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_bundle_records_family_and_positions(family, family_models):
    _, bundle = family_models[family]
    manifest = json.loads((bundle / "bundle.json").read_text())
    expected_family = "bert" if family == "bert-unigram" else family
    assert manifest["family"] == expected_family and manifest["task"] == "embed"
    assert manifest["position_offset"] == (0 if family == "bert-unigram" else 2)  # padding_idx 1, plus one


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_npu_path_and_the_int8_preview(family, family_models, tmp_path):
    _, bundle = family_models[family]
    with SentenceEncoder(bundle, backend="onnx") as encoder:
        expected = encoder.encode(TEXTS)
    npu_bundle = bundle_with_placeholder_mxq(bundle, tmp_path / "npu", {"graph": "model", "mask_input": "auto"})
    fake = FakeNpu(npu_bundle / "encoder.onnx", num_cores=2)
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=2, qbruntime_module=fake) as encoder:
        np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5)
    with SentenceEncoder(bundle, backend="onnx", encoder_precision="int8") as encoder:
        assert cosine_rows(encoder.encode(TEXTS), expected).min() >= INT8_COSINE_FLOOR


def test_a_family_not_run_on_a_card_says_so(family_models, tmp_path):
    _, bundle = family_models["xlm-roberta"]
    npu_bundle = bundle_with_placeholder_mxq(bundle, tmp_path / "npu", {"run_on_a_card": False})
    fake = FakeNpu(npu_bundle / "encoder.onnx", num_cores=1)
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=1, qbruntime_module=fake) as encoder:
        assert "xlm-roberta family's NPU graph has not been run on a card" in encoder.backend_reason


@pytest.mark.parametrize(
    ("model_type", "field"),
    [("modernbert", "model_type 'modernbert'"), ("nomic_bert", "model_type 'nomic_bert'"), ("t5", "model_type 't5'")],
)
def test_other_families_are_refused_naming_the_field(model_type, field, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 8}))
    with pytest.raises(CompileError, match=f"config.json {field} is not supported"):
        build_bundle(str(folder), tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_max_seq_length_zero_is_an_error(family_models, tmp_path):
    folder, _ = family_models["roberta"]
    with pytest.raises(CompileError, match="max_seq_length 0 .* must be an integer from 2"):
        build_bundle(str(folder), tmp_path / "bundle", max_seq_length=0)


def test_old_bundles_without_a_family_still_load(tiny_bundle, tmp_path):
    """Bundles written before families were recorded read as BERT embedding models."""
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    for key in ("family", "position_offset", "task", "head"):
        manifest.pop(key, None)
    copy = tmp_path / "old"
    copy.mkdir()
    for item in tiny_bundle.iterdir():
        if item.name != "bundle.json":
            (copy / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with SentenceEncoder(copy, backend="onnx") as old, SentenceEncoder(tiny_bundle, backend="onnx") as new:
        assert old.manifest.family == "bert" and old.manifest.position_offset == 0
        np.testing.assert_array_equal(old.encode(TEXTS[:3]), new.encode(TEXTS[:3]))
