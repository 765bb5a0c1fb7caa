"""Arguments of every kind a user passes: integers of any type are integers, everything else that
is not what was asked for is a clear error naming the argument, as early as possible."""

from __future__ import annotations

import numpy as np
import pytest

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.testing import FakeNpu, bundle_with_placeholder_mxq

TEXTS = ["a dog runs in the park", "two cats", "the news today"]


@pytest.fixture(scope="module")
def encoder(tiny_bundle):
    with SentenceEncoder(tiny_bundle, backend="onnx") as enc:
        yield enc


@pytest.fixture(scope="module")
def npu_bundle(tiny_bundle, tmp_path_factory):
    return bundle_with_placeholder_mxq(tiny_bundle, tmp_path_factory.mktemp("arguments") / "bundle")


@pytest.mark.parametrize("batch_size", [np.int64(2), np.int32(2), np.uint8(2)])
def test_numpy_integer_batch_sizes_are_accepted(encoder, batch_size):
    np.testing.assert_array_equal(encoder.encode(TEXTS, batch_size=batch_size), encoder.encode(TEXTS, batch_size=2))


@pytest.mark.parametrize("flag", ["no", 1, None, "False"])
def test_normalize_embeddings_must_be_a_bool(encoder, flag):
    with pytest.raises(TypeError, match="normalize_embeddings must be True or False"):
        encoder.encode(TEXTS, normalize_embeddings=flag)


def test_numpy_bools_normalize(encoder):
    vectors = encoder.encode(TEXTS, normalize_embeddings=np.bool_(True))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("cores", [True, 2.0, "2", [(0, 0.0)], [(0,)], [0, 1], [(True, 0)]])
def test_npu_cores_of_the_wrong_kind(npu_bundle, cores):
    fake = FakeNpu(npu_bundle / "encoder.onnx")
    with pytest.raises(ValueError, match="cores must be"):
        SentenceEncoder(npu_bundle, backend="npu", npu_cores=cores, qbruntime_module=fake)
    assert fake.busy_cores() == set()  # nothing left launched


def test_npu_cores_as_a_numpy_integer(npu_bundle):
    fake = FakeNpu(npu_bundle / "encoder.onnx")
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=np.int64(2), qbruntime_module=fake) as encoder:
        assert encoder.npu_cores_in_service == [(0, 0), (0, 1)]


@pytest.mark.parametrize("threads", ["2", 0, -5, 1.5, True])
def test_num_threads_must_be_a_positive_int(tiny_bundle, threads):
    with pytest.raises(ValueError, match="num_threads must be a positive int or None"):
        SentenceEncoder(tiny_bundle, backend="onnx", num_threads=threads)


def test_a_zero_dimensional_array_is_refused(encoder):
    with pytest.raises(TypeError, match="texts is a 0-d array"):
        encoder.encode(np.array("a dog"))


def test_a_numpy_array_of_texts_is_a_list(encoder):
    np.testing.assert_array_equal(encoder.encode(np.array(TEXTS)), encoder.encode(TEXTS))


def test_a_surrogate_pair_is_the_character_it_encodes(encoder):
    """ "\\ud83d\\ude00" is U+1F600 given as UTF-16 code units (as from JSON's "\\ud83d\\ude00")."""
    as_pair = encoder.tokenize(["the dog \ud83d\ude00 runs"]).input_ids
    as_char = encoder.tokenize(["the dog \U0001f600 runs"]).input_ids
    np.testing.assert_array_equal(as_pair, as_char)


def test_a_lone_surrogate_is_a_replacement_character(encoder):
    lone = encoder.tokenize(["the dog \ud800 runs"]).input_ids
    replaced = encoder.tokenize(["the dog \ufffd runs"]).input_ids
    np.testing.assert_array_equal(lone, replaced)


@pytest.mark.parametrize("name", [["query"], {"a": 1}, 3])
def test_prompt_name_must_be_a_str(encoder, name):
    with pytest.raises(TypeError, match="prompt_name must be a str, found"):
        encoder.encode("a text", prompt_name=name)
