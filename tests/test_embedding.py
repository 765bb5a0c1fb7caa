"""Host embedding + LayerNorm against transformers' BertEmbeddings, on a random tiny config."""

import numpy as np
import pytest
import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings

from bertnpu_runtime.embedding import EmbeddingTables, embed, layer_norm


@pytest.fixture(scope="module")
def torch_embeddings() -> BertEmbeddings:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, max_position_embeddings=12, type_vocab_size=2, layer_norm_eps=1e-12)
    module = BertEmbeddings(config).eval()
    with torch.no_grad():  # random LayerNorm affine so a swapped weight/bias would show
        module.LayerNorm.weight.normal_()
        module.LayerNorm.bias.normal_()
    return module


@pytest.fixture(scope="module")
def tables(torch_embeddings: BertEmbeddings) -> EmbeddingTables:
    m = torch_embeddings
    return EmbeddingTables(
        word=m.word_embeddings.weight.detach().numpy().copy(),
        position=m.position_embeddings.weight.detach().numpy().copy(),
        token_type=m.token_type_embeddings.weight.detach().numpy().copy(),
        layer_norm_weight=m.LayerNorm.weight.detach().numpy().copy(),
        layer_norm_bias=m.LayerNorm.bias.detach().numpy().copy(),
        layer_norm_eps=m.LayerNorm.eps,
    )


def test_embed_matches_bert_embeddings(torch_embeddings, tables):
    ids = np.random.default_rng(1).integers(0, 50, size=(3, 7))
    types = np.random.default_rng(2).integers(0, 2, size=(3, 7))
    with torch.no_grad():
        expected = torch_embeddings(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types)).numpy()
    got = embed(tables, ids, types)
    assert got.dtype == np.float32 and got.shape == (3, 7, 16)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_default_token_type_is_zero(torch_embeddings, tables):
    ids = np.array([[2, 5, 9, 3]])
    with torch.no_grad():
        expected = torch_embeddings(input_ids=torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(embed(tables, ids), expected, rtol=0, atol=2e-6)


def test_embed_does_not_modify_tables(tables):
    before = tables.word.copy(), tables.position.copy()
    embed(tables, np.array([[1, 2, 3]]))
    np.testing.assert_array_equal(tables.word, before[0])
    np.testing.assert_array_equal(tables.position, before[1])


def test_embed_rejects_sequence_longer_than_position_table(tables):
    with pytest.raises(ValueError, match="13 tokens is longer than the 12 position rows"):
        embed(tables, np.zeros((1, 13), dtype=np.int64))


def test_layer_norm_uses_given_eps():
    x = np.full((1, 4), 3.0, dtype=np.float32)  # variance ~1e-7: eps 1e-2 swamps it, eps 1e-12 does not
    x[0, 0] = 3.001
    small = layer_norm(x.copy(), np.ones(4, np.float32), np.zeros(4, np.float32), 1e-12)
    large = layer_norm(x.copy(), np.ones(4, np.float32), np.zeros(4, np.float32), 1e-2)
    assert not np.allclose(small, large)  # the eps the bundle declares matters; 1e-5 vs 1e-12 was the tutorial's bug
