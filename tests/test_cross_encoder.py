"""CrossEncoder (rerankers) against sentence-transformers' CrossEncoder on the same random models:
BertForSequenceClassification (ms-marco-MiniLM's shape) and XLMRobertaForSequenceClassification
(bge-reranker's), one label and three; on ONNX Runtime, the NPU path and the int8 preview."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import RERANKERS

from bertnpu_runtime import BundleError, CrossEncoder, SentenceEncoder
from bertnpu_runtime.testing import FakeNpu, bundle_with_placeholder_mxq

QUERY = "Where does the man play the guitar?"
DOCUMENTS = [
    "A man is playing a guitar on the street.",
    "Un homme joue de la guitare près du café.",
    "男人在弹吉他。",
    "남자가 기타를 치고 있다.",
    "رجل يعزف على الغيتار",
    "A chef slices onions 🧅 in a busy kitchen.",
    "The weather was cold and the river froze. " * 8,
]
PAIRS = [(QUERY, document) for document in DOCUMENTS] + [(DOCUMENTS[1], DOCUMENTS[2])]
MODELS = RERANKERS


def reference(folder):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return STCrossEncoder(str(folder), device="cpu")


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_match_sentence_transformers(name, rerankers):
    folder, bundle = rerankers[name]
    model = reference(folder)
    with CrossEncoder(bundle, backend="onnx") as ours:
        assert ours.num_labels == MODELS[name][1]
        np.testing.assert_allclose(ours.predict(PAIRS), model.predict(PAIRS), atol=1e-4)
        np.testing.assert_allclose(ours.predict(PAIRS[0]), model.predict(PAIRS[0]), atol=1e-4)  # one pair
        for options in ({"activation_fn": "identity"}, {"apply_softmax": True}):
            theirs = model.predict(PAIRS, **{**options, "activation_fn": _torch_activation(options)})
            np.testing.assert_allclose(ours.predict(PAIRS, **options), theirs, atol=1e-4)


def _torch_activation(options: dict):
    import torch

    return torch.nn.Identity() if options.get("activation_fn") == "identity" else None


@pytest.mark.parametrize("name", ["bert-1", "xlm-roberta-1"])
def test_pairs_are_tokenized_as_the_models_tokenizer_joins_them(name, rerankers):
    from transformers import AutoTokenizer

    folder, bundle = rerankers[name]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    expected = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], truncation="longest_first", max_length=40)
    with CrossEncoder(bundle, backend="onnx") as ours:
        rows = ours.pipeline.tokenizer.encode_pairs(PAIRS).padded()
    for row in range(len(PAIRS)):
        length = rows.lengths[row]
        assert rows.input_ids[row][:length].tolist() == expected["input_ids"][row]
        if "token_type_ids" in expected:  # BERT: 0 for the query, 1 for the document
            assert rows.token_type_ids[row][:length].tolist() == expected["token_type_ids"][row]
            assert 1 in expected["token_type_ids"][row]


@pytest.mark.parametrize("name", ["bert-1", "xlm-roberta-1"])
def test_rank_is_sentence_transformers_rank(name, rerankers):
    folder, bundle = rerankers[name]
    theirs = reference(folder).rank(QUERY, DOCUMENTS, top_k=4, return_documents=True)
    with CrossEncoder(bundle, backend="onnx") as ours:
        mine = ours.rank(QUERY, DOCUMENTS, top_k=4, return_documents=True)
        assert len(ours.rank(QUERY, DOCUMENTS)) == len(DOCUMENTS)
    assert [r["corpus_id"] for r in mine] == [r["corpus_id"] for r in theirs]
    assert [r["text"] for r in mine] == [r["text"] for r in theirs]
    np.testing.assert_allclose([r["score"] for r in mine], [r["score"] for r in theirs], atol=1e-4)


def test_the_npu_path_and_the_int8_preview(rerankers, tmp_path):
    _, bundle = rerankers["xlm-roberta-1"]
    with CrossEncoder(bundle, backend="onnx") as ours:
        expected = ours.predict(PAIRS)
    npu_bundle = bundle_with_placeholder_mxq(bundle, tmp_path / "npu", {"graph": "model", "mask_input": "auto"})
    fake = FakeNpu(npu_bundle / "encoder.onnx", num_cores=2)
    with CrossEncoder(npu_bundle, backend="npu", npu_cores=2, qbruntime_module=fake) as ours:
        np.testing.assert_allclose(ours.predict(PAIRS), expected, atol=1e-5)
    with CrossEncoder(bundle, backend="onnx", encoder_precision="int8") as ours:
        previewed = ours.predict(PAIRS)
    # Random weights quantize worse than the real models docs/int8.md measures; a broken int8 graph
    # (a wrong scale, swapped inputs) gives scores unrelated to float32's, which these catch.
    assert np.abs(previewed - expected).mean() <= 0.1
    assert np.corrcoef(previewed, expected)[0, 1] >= 0.75


def test_the_bundle_records_the_task_and_head(rerankers):
    _, bundle = rerankers["bert-3"]
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["task"] == "rerank" and manifest["head"] == {"num_labels": 3, "activation": "identity"}
    assert "head.npz" in manifest["files"]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("a", "b"), ("c",)], r"sentence_pairs\[1\] must be a pair of two str"),
        ([("a", "b"), ("c", None)], r"sentence_pairs\[1\] must be a pair of two str"),
        (["ab", "cd", "ef"], r"sentence_pairs\[0\] must be a pair of two str"),
        ("a b", "sentence_pairs must be a sequence of"),
    ],
)
def test_bad_pairs_are_named_by_index(rerankers, pairs, message):
    _, bundle = rerankers["bert-1"]
    with CrossEncoder(bundle, backend="onnx") as ours, pytest.raises(TypeError, match=message):
        ours.predict(pairs)


def test_wrong_arguments_and_the_wrong_class_are_clear_errors(rerankers, tiny_bundle):
    _, one_label = rerankers["bert-1"]
    _, three_labels = rerankers["bert-3"]
    with CrossEncoder(one_label, backend="onnx") as ours:
        with pytest.raises(TypeError, match=r"documents\[1\] must be a str"):
            ours.rank(QUERY, ["fine", 3])
        with pytest.raises(ValueError, match="activation_fn must be one of"):
            ours.predict(PAIRS, activation_fn="relu")
        assert ours.predict([]).shape == (0,)
    with (
        CrossEncoder(three_labels, backend="onnx") as ours,
        pytest.raises(ValueError, match="one label; this one has 3"),
    ):
        ours.rank(QUERY, DOCUMENTS)
    with pytest.raises(BundleError, match="is a reranker bundle .*open it with CrossEncoder"):
        SentenceEncoder(one_label, backend="onnx")
    with pytest.raises(BundleError, match="is an embedding bundle .*open it with SentenceEncoder"):
        CrossEncoder(tiny_bundle, backend="onnx")


def test_the_bert_rerankers_tokenizer_knows_the_words(rerankers):
    """The fixture's reranker has the tiny WordPiece vocabulary, not only the special tokens (with
    transformers 5, the builder's `vocab_file=` had left 5 tokens: every word was [UNK])."""
    _, bundle = rerankers["bert-1"]
    with CrossEncoder(bundle, backend="onnx") as model:
        rows = model.pipeline.tokenizer.encode_pairs([("a man plays", "the guitar in the park")])
    assert 1 not in rows.ids.tolist()  # [UNK]
