"""Host embedding + LayerNorm against transformers' BertEmbeddings, on random tiny configs."""

import numpy as np
import pytest
import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings

from bertnpu_runtime.embedding import EmbeddingLayer, EmbeddingTables

VOCAB, HIDDEN, POSITIONS = 50, 16, 12


def bert_embeddings(seed: int, eps: float = 1e-12, scale: float = 1.0) -> BertEmbeddings:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, max_position_embeddings=POSITIONS, type_vocab_size=2, layer_norm_eps=eps
    )
    module = BertEmbeddings(config).eval()
    with torch.no_grad():  # random LayerNorm affine so a swapped weight/bias would show
        module.LayerNorm.weight.normal_()
        module.LayerNorm.bias.normal_()
        for table in (module.word_embeddings, module.position_embeddings, module.token_type_embeddings):
            table.weight.mul_(scale).add_(torch.randn(HIDDEN) * scale)  # rows with a nonzero mean, as real ones have
    return module


def tables_of(module: BertEmbeddings) -> EmbeddingTables:
    return EmbeddingTables(
        word=module.word_embeddings.weight.detach().numpy().copy(),
        position=module.position_embeddings.weight.detach().numpy().copy(),
        token_type=module.token_type_embeddings.weight.detach().numpy().copy(),
        layer_norm_weight=module.LayerNorm.weight.detach().numpy().copy(),
        layer_norm_bias=module.LayerNorm.bias.detach().numpy().copy(),
        layer_norm_eps=module.LayerNorm.eps,
    )


def reference(module: BertEmbeddings, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(input_ids=torch.from_numpy(np.atleast_2d(ids))).numpy().reshape(*ids.shape, HIDDEN)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.02, 50.0])  # BERT's initializer range is 0.02
def test_matches_bert_embeddings(seed: int, scale: float):
    module = bert_embeddings(seed, scale=scale)
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(3, 7))
    got = EmbeddingLayer(tables_of(module))(ids)
    assert got.dtype == np.float32 and got.shape == (3, 7, HIDDEN)
    np.testing.assert_allclose(got, reference(module, ids), rtol=0, atol=3e-6)


def test_every_length_and_every_position():
    module = bert_embeddings(3)
    layer = EmbeddingLayer(tables_of(module))
    for length in range(1, POSITIONS + 1):
        ids = np.random.default_rng(length).integers(0, VOCAB, size=(2, length))
        np.testing.assert_allclose(layer(ids), reference(module, ids), rtol=0, atol=3e-6)


def test_one_sentence_without_batch_axis():
    module = bert_embeddings(4)
    ids = np.array([2, 5, 9, 3])
    got = EmbeddingLayer(tables_of(module))(ids)
    assert got.shape == (4, HIDDEN)
    np.testing.assert_allclose(got, reference(module, ids), rtol=0, atol=3e-6)


def test_same_row_whatever_the_batch():
    layer = EmbeddingLayer(tables_of(bert_embeddings(5)))
    ids = np.random.default_rng(5).integers(0, VOCAB, size=(4, 9))
    together = layer(ids)
    for row in range(4):
        np.testing.assert_array_equal(layer(ids[row : row + 1])[0], together[row])


def test_writes_into_out_when_given():
    layer = EmbeddingLayer(tables_of(bert_embeddings(9)))
    ids = np.random.default_rng(9).integers(0, VOCAB, size=(3, 6))
    out = np.full((3, 6, HIDDEN), np.nan, np.float32)
    assert layer(ids, out) is out
    np.testing.assert_array_equal(out, layer(ids))
    negative = ids - VOCAB  # ids from the end, as NumPy reads them: the same rows
    np.testing.assert_array_equal(layer(negative, np.empty_like(out)), out)
    with pytest.raises(IndexError):
        layer(ids + VOCAB, np.empty_like(out))


def test_tables_are_not_modified():
    tables = tables_of(bert_embeddings(6))
    before = [a.copy() for a in (tables.word, tables.position, tables.token_type, tables.layer_norm_weight)]
    EmbeddingLayer(tables)(np.array([[1, 2, 3]]))
    for array, saved in zip((tables.word, tables.position, tables.token_type, tables.layer_norm_weight), before):
        np.testing.assert_array_equal(array, saved)


def test_rejects_sequence_longer_than_max_length():
    tables = tables_of(bert_embeddings(7))
    with pytest.raises(ValueError, match="13 tokens is longer than this embedding's max_length 12"):
        EmbeddingLayer(tables)(np.zeros((1, 13), dtype=np.int64))
    with pytest.raises(ValueError, match="9 tokens is longer than this embedding's max_length 8"):
        EmbeddingLayer(tables, max_length=8)(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match=r"max_length must be 1..12"):
        EmbeddingLayer(tables, max_length=13)


def test_uses_the_model_eps():
    # Rows nearly constant: variance ~1e-8, so eps 1e-2 swamps it and eps 1e-12 does not.
    module = bert_embeddings(8, eps=1e-12, scale=1e-4)
    tables = tables_of(module)
    ids = np.array([[1, 2, 3]])
    small = EmbeddingLayer(tables)(ids)
    large = EmbeddingLayer(EmbeddingTables(**{**vars(tables), "layer_norm_eps": 1e-2}))(ids)
    np.testing.assert_allclose(small, reference(module, ids), rtol=0, atol=3e-5)
    assert not np.allclose(small, large)  # the eps the bundle declares matters; 1e-5 vs 1e-12 was the tutorial's bug
