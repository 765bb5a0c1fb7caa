"""sentence-transformers parity for retrieval models: every pooling mode, prompts (E5-like,
BGE-like, include_prompt=False, a default prompt), Matryoshka truncation, quantized outputs,
similarity functions and token embeddings, each against sentence-transformers on the same
random-weight model folder."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
from conftest import write_tiny_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import quantize_embeddings as st_quantize
from vectors import cosine_rows

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.quantization import quantize_embeddings
from compile import build_bundle

TEXTS = [
    "A man is playing a guitar.",
    "the cat sat on the mat",
    "two dogs run in the park while people watch",
    "news today: the president met the minister",
    "Hi",
    "a very long sentence " * 5,
]
E5_PROMPTS = {"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": None}
BGE_PROMPTS = {"prompts": {"query": "Represent this sentence for searching relevant passages: "}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (bertnpu encoder, sentence-transformers model), built once per name."""
    made: dict[str, tuple[SentenceEncoder, SentenceTransformer]] = {}

    def make(name: str, **options):
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            folder = write_tiny_model(root / "model", seed=len(made) + 1, **options)
            bundle = build_bundle(str(folder), root / "bundle", calib_samples=4)
            made[name] = (SentenceEncoder(bundle, backend="onnx"), SentenceTransformer(str(folder), device="cpu"))
        return made[name]

    yield make
    for encoder, _ in made.values():
        encoder.close()


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_every_pooling_mode(models, pooling):
    ours, theirs = models(f"pool-{pooling}", pooling=pooling)
    assert ours.manifest.pooling == pooling
    expected = theirs.encode(TEXTS)
    got = ours.encode(TEXTS)
    assert cosine_rows(got, expected).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(expected, axis=1), rtol=1e-4)


def test_e5_style_query_and_passage_prefixes(models):
    ours, theirs = models("e5", st_config=E5_PROMPTS, normalize=True)
    assert ours.prompts == E5_PROMPTS["prompts"]
    for method in ("encode_query", "encode_document"):
        assert cosine_rows(getattr(ours, method)(TEXTS), getattr(theirs, method)(TEXTS)).min() >= 0.99999
    assert (
        cosine_rows(ours.encode(TEXTS, prompt_name="query"), theirs.encode(TEXTS, prompt_name="query")).min() >= 0.99999
    )
    assert cosine_rows(ours.encode(TEXTS, prompt="custom: "), theirs.encode(TEXTS, prompt="custom: ")).min() >= 0.99999
    plain = ours.encode(TEXTS)  # no default prompt: as written
    assert (
        cosine_rows(plain, theirs.encode(TEXTS)).min() >= 0.99999
        and cosine_rows(plain, ours.encode_query(TEXTS)).max() < 0.9999
    )


def test_bge_style_cls_with_a_query_instruction(models):
    ours, theirs = models("bge", pooling="cls", normalize=True, st_config=BGE_PROMPTS)
    assert cosine_rows(ours.encode_query(TEXTS), theirs.encode_query(TEXTS)).min() >= 0.99999
    # No document prompt: documents go in as they are, on both sides.
    assert cosine_rows(ours.encode_document(TEXTS), theirs.encode_document(TEXTS)).min() >= 0.99999


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_a_prompt_left_out_of_the_pooling(models, pooling):
    ours, theirs = models(f"exclude-{pooling}", pooling=pooling, include_prompt=False, st_config=E5_PROMPTS)
    assert not ours.manifest.include_prompt
    got, expected = ours.encode(TEXTS, prompt_name="query"), theirs.encode(TEXTS, prompt_name="query")
    assert cosine_rows(got, expected).min() >= 0.99999


def test_a_default_prompt_is_used_without_asking(models):
    config = {"prompts": {"query": "query: ", "classification": "classify: "}, "default_prompt_name": "classification"}
    ours, theirs = models("default-prompt", st_config=config)
    assert ours.default_prompt_name == "classification"
    assert cosine_rows(ours.encode(TEXTS), theirs.encode(TEXTS)).min() >= 0.99999
    with pytest.raises(ValueError, match="prompt_name 'nope' is not one of this model's prompts"):
        ours.encode(TEXTS, prompt_name="nope")


def test_the_seed_tutorials_shape(models):
    shape = {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 512,
        "max_position_embeddings": 512,
    }
    ours, theirs = models("tutorial-shape", shape=shape)
    assert ours.dim == 128
    assert cosine_rows(ours.encode(TEXTS), theirs.encode(TEXTS)).min() >= 0.99999


@pytest.mark.parametrize("normalize_embeddings", [False, True])
@pytest.mark.parametrize("model_normalizes", [False, True])
def test_matryoshka_truncation_in_sentence_transformers_order(models, normalize_embeddings, model_normalizes):
    ours, theirs = models(f"norm-{model_normalizes}", normalize=model_normalizes)
    expected = theirs.encode(TEXTS, truncate_dim=8, normalize_embeddings=normalize_embeddings)
    got = ours.encode(TEXTS, truncate_dim=8, normalize_embeddings=normalize_embeddings)
    assert got.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    with SentenceEncoder(ours.bundle_dir, backend="onnx", truncate_dim=8) as truncating:
        np.testing.assert_allclose(
            truncating.encode(TEXTS, normalize_embeddings=normalize_embeddings), expected, atol=2e-5
        )
    with pytest.raises(ValueError, match="truncate_dim 33 is larger than this model's 32"):
        ours.encode(TEXTS, truncate_dim=33)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantized_outputs(models, precision):
    ours, theirs = models("pool-mean", pooling="mean")
    floats = theirs.encode(TEXTS * 20)
    exact = quantize_embeddings(floats, precision)
    np.testing.assert_array_equal(exact, st_quantize(floats, precision))  # the same function on the same input
    assert exact.dtype == st_quantize(floats, precision).dtype
    got, expected = ours.encode(TEXTS * 20, precision=precision), theirs.encode(TEXTS * 20, precision=precision)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    # Float rounding may move a value across a bucket edge or zero: at most one step, rarely.
    if precision.endswith("int8"):
        difference = np.abs(got.astype(int) - expected.astype(int))
        assert difference.max() <= 1 and (difference == 0).mean() > 0.99
    else:
        assert (np.unpackbits(got.view(np.uint8)) == np.unpackbits(expected.view(np.uint8))).mean() > 0.999
    with pytest.raises(ValueError, match="from a single embedding") if precision.endswith("int8") else nullcontext():
        ours.encode(TEXTS[0], precision=precision)


@pytest.mark.parametrize("function", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_functions(models, function):
    ours, theirs = models(f"similarity-{function}", st_config={"similarity_fn_name": function})
    assert ours.similarity_fn_name == function == theirs.similarity_fn_name
    a, b = theirs.encode(TEXTS[:3]), theirs.encode(TEXTS[2:])
    np.testing.assert_allclose(ours.similarity(a, b), theirs.similarity(a, b).numpy(), rtol=1e-5, atol=1e-5)


def test_token_embeddings(models):
    ours, theirs = models("pool-mean", pooling="mean")
    got = ours.encode(TEXTS, output_value="token_embeddings")
    expected = theirs.encode(TEXTS, output_value="token_embeddings")
    assert [g.shape for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        assert cosine_rows(g, e.numpy()).min() >= 0.99999
    single = ours.encode(TEXTS[0], output_value="token_embeddings")
    np.testing.assert_allclose(single, got[0], atol=1e-5)


def test_bad_retrieval_arguments(models):
    ours, _ = models("pool-mean", pooling="mean")
    with pytest.raises(ValueError, match="precision must be one of"):
        ours.encode(TEXTS, precision="float16")
    with pytest.raises(ValueError, match="output_value must be one of"):
        ours.encode(TEXTS, output_value="logits")
    with pytest.raises(ValueError, match="truncate_dim must be a positive integer"):
        ours.encode(TEXTS, truncate_dim=0)


def test_compile_options_add_prompts_and_override_pooling(tmp_path):
    from compile.cli import main as compile_main

    folder = write_tiny_model(tmp_path / "model", seed=7, st_config=E5_PROMPTS)
    out = tmp_path / "bundle"
    assert (
        compile_main(
            [
                "--model",
                str(folder),
                "--out",
                str(out),
                "--calib-samples",
                "4",
                "--pooling",
                "cls",
                "--prompt",
                "query=search: ",
                "--prompt",
                "clustering=cluster: ",
            ]
        )
        == 0
    )
    with SentenceEncoder(out, backend="onnx") as ours:
        assert ours.manifest.pooling == "cls"
        assert ours.prompts == {"query": "search: ", "document": "passage: ", "clustering": "cluster: "}
        theirs = SentenceTransformer(str(folder), device="cpu")
        first_tokens = theirs.encode(["search: " + t for t in TEXTS], output_value="token_embeddings")
        expected = np.stack([tokens[0].numpy() for tokens in first_tokens])  # cls pooling of the same texts
        assert cosine_rows(ours.encode_query(TEXTS), expected).min() >= 0.99999
