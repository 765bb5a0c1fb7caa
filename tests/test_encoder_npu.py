"""SentenceEncoder end to end on the NPU backend, with the qbruntime test double computing the encoder
through the bundle's ONNX graph: the NPU code path must give the ONNX path's vectors."""

import gc
import logging
import threading
from collections import Counter

import numpy as np
import pytest
from conftest import in_forked_child
from vectors import cosine_rows

from bertnpu_runtime import BackendUnavailableError, SentenceEncoder
from bertnpu_runtime.testing import FakeNpu, bundle_with_placeholder_mxq

SENTENCES = [
    "A man is playing a guitar.",
    "A man is playing a flute.",  # same token length as the first: one 4-D call
    "Hi",
    "",
    "Two dogs run through a field of tall grass while their owner watches from the road.",
    "The cat sat on the mat.",
    "word " * 60,  # truncated to max_seq_length
]


@pytest.fixture(scope="module")
def npu_bundle(tiny_bundle, tmp_path_factory):
    return bundle_with_placeholder_mxq(tiny_bundle, tmp_path_factory.mktemp("npu") / "bundle")


@pytest.fixture(scope="module")
def onnx_vectors(tiny_bundle):
    with SentenceEncoder(tiny_bundle, backend="onnx") as enc:
        return enc.encode(SENTENCES)


@pytest.mark.parametrize("cores, batch_size", [(1, 32), (4, 32), (4, 2), (8, 1)])
def test_npu_backend_gives_onnx_vectors(npu_bundle, onnx_vectors, cores, batch_size):
    fake = FakeNpu(npu_bundle / "encoder.onnx", latency_s=0.02)  # busy cores: calls go to the free ones
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=cores, qbruntime_module=fake) as enc:
        assert enc.backend == "npu"
        vectors = enc.encode(SENTENCES, batch_size=batch_size)
    assert cosine_rows(vectors, onnx_vectors).min() >= 0.99999
    # Nothing was padded: each sentence went once, as [1, seq, hidden] or in [n, 1, seq, hidden], at its true length.
    with SentenceEncoder(npu_bundle, backend="onnx") as onnx:
        lengths = Counter(int(n) for n in onnx.tokenize(SENTENCES).lengths)
    sent = Counter()
    for call in fake.calls:
        sent[call.shapes[0][-2]] += call.sentences
    assert sent == lengths
    assert len({call.core for call in fake.calls}) == min(cores, len(fake.calls))


def test_an_npu_that_takes_one_sentence_per_call_gives_the_same_vectors(npu_bundle, onnx_vectors):
    """If qbruntime refuses 4-D calls of several sentences, encode() still works, one sentence a call."""
    fake = FakeNpu(npu_bundle / "encoder.onnx", max_batch=1)
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=2, qbruntime_module=fake) as enc:
        vectors = enc.encode(SENTENCES)
        again = enc.encode(SENTENCES)
    assert cosine_rows(vectors, onnx_vectors).min() >= 0.99999
    np.testing.assert_array_equal(again, vectors)
    assert fake.calls and all(call.sentences == 1 for call in fake.calls)


def test_an_encoder_dropped_without_close_releases_its_cores(npu_bundle, onnx_vectors):
    """As sentence-transformers users do: no close(). The next encoder on the same cores must start."""
    fake = FakeNpu(npu_bundle / "encoder.onnx")
    forgotten = SentenceEncoder(npu_bundle, backend="npu", npu_cores=8, qbruntime_module=fake)
    forgotten.encode(SENTENCES)
    assert len(fake.busy_cores()) == 8
    del forgotten
    gc.collect()
    assert fake.busy_cores() == set() and all(model.disposed for model in fake.models)
    with SentenceEncoder(npu_bundle, backend="npu", npu_cores=8, qbruntime_module=fake) as enc:
        assert cosine_rows(enc.encode(SENTENCES), onnx_vectors).min() >= 0.99999
    assert not [t for t in threading.enumerate() if t.name.startswith("bertnpu-npu")]


def test_a_forked_child_leaves_the_parents_npu_models_alone(npu_bundle, onnx_vectors):
    """A child that drops its copy of the encoder must not dispose the models the parent still runs."""
    fake = FakeNpu(npu_bundle / "encoder.onnx")
    enc = SentenceEncoder(npu_bundle, backend="npu", npu_cores=2, qbruntime_module=fake)
    enc.encode(SENTENCES)

    def drop_the_copy() -> str:
        nonlocal enc
        del enc
        gc.collect()
        return str(sum(model.disposed for model in fake.models))

    assert in_forked_child(drop_the_copy) == "0"
    assert cosine_rows(enc.encode(SENTENCES), onnx_vectors).min() >= 0.99999
    enc.close()
    assert all(model.disposed for model in fake.models)


def test_last_chunk_runs_its_largest_calls_first(npu_bundle):
    """So that the cores' final calls are short and they finish together; earlier chunks stay longest first."""
    texts = ["word"] * 4 + ["word " * 10] + ["word word word"] * 3 + ["word"] * 4  # chunks of 4 and 8 texts
    fake = FakeNpu(npu_bundle / "encoder.onnx", max_batch=None)
    with SentenceEncoder(
        npu_bundle, backend="npu", npu_cores=1, npu_group_sentences=True, qbruntime_module=fake
    ) as enc:
        short, long, mid = (int(n) for n in enc.tokenize(texts).lengths[3:6])
        vectors = enc.encode(texts, batch_size=4)
    assert short < mid < long
    # One core runs calls in the order they were queued: the first chunk, then the last one's 4, 3 and 1 sentences.
    assert [(call.sentences, call.shapes[0][-2]) for call in fake.calls] == [
        (4, short),
        (4, short),
        (3, mid),
        (1, long),
    ]
    with SentenceEncoder(npu_bundle, backend="onnx") as onnx:
        assert cosine_rows(vectors, onnx.encode(texts)).min() >= 0.99999  # every row back in input order


def test_short_batches_wait_one_chunk_for_more_of_their_length(npu_bundle):
    """Fewer, fuller calls: a short batch of one chunk's texts is sent with the next chunk, filled
    up where that chunk has texts of the same length, and never waits longer than one chunk."""
    a, b, c, d = ("word " * n for n in (1, 2, 3, 4))
    texts = [a, a, b, b] + [a, a] + [c] * 6 + [c] * 2 + [d] * 14  # chunks of 4, 8 and 16 texts at batch_size 4
    fake = FakeNpu(npu_bundle / "encoder.onnx", max_batch=None)
    with SentenceEncoder(
        npu_bundle, backend="npu", npu_cores=1, npu_group_sentences=True, qbruntime_module=fake
    ) as enc:
        len_a, len_b, len_c, len_d = (int(n) for n in enc.tokenize([a, b, c, d]).lengths)
        vectors = enc.encode(texts, batch_size=4)
    assert len_a < len_b < len_c < len_d
    # One core runs calls in the order they were queued. The first chunk sends nothing; the second
    # sends a and b (held, b still short), 4 of its 6 c (2 wait); the last sends everything.
    assert [(call.sentences, call.shapes[0][-2]) for call in fake.calls] == [
        (4, len_c),
        (2, len_b),
        (4, len_a),
        (4, len_d),
        (4, len_d),
        (4, len_d),
        (4, len_c),
        (2, len_d),
    ]
    with SentenceEncoder(npu_bundle, backend="onnx") as onnx:
        assert cosine_rows(vectors, onnx.encode(texts)).min() >= 0.99999  # every row back in input order


def test_npu_batches_default_to_64_sentences_and_batch_size_still_caps_them(npu_bundle):
    """Without batch_size, a call takes up to 64 sentences of one length (fewer calls, each a thread
    wake-up on the host); a batch_size given caps it as before."""
    texts = ["A man is playing a guitar."] * 150  # one length: calls of a full batch, and the rest
    fake = FakeNpu(npu_bundle / "encoder.onnx", max_batch=None)
    with SentenceEncoder(
        npu_bundle, backend="npu", npu_cores=1, npu_group_sentences=True, qbruntime_module=fake
    ) as enc:
        assert enc.default_batch_size == 64
        by_default = enc.encode(texts)
        default_calls = [call.sentences for call in fake.calls]
        fake.calls.clear()
        capped = enc.encode(texts, batch_size=32)
    assert max(default_calls) == 64 and sum(default_calls) == 150
    assert max(call.sentences for call in fake.calls) == 32 and sum(call.sentences for call in fake.calls) == 150
    np.testing.assert_allclose(by_default, capped, atol=1e-5)


def test_auto_picks_the_npu_when_device_and_mxq_exist(npu_bundle, onnx_vectors):
    with SentenceEncoder(npu_bundle, qbruntime_module=FakeNpu(npu_bundle / "encoder.onnx")) as enc:
        assert enc.backend == "npu"
        assert cosine_rows(enc.encode(SENTENCES), onnx_vectors).min() >= 0.99999


def test_auto_without_a_device_falls_back_and_logs(npu_bundle, caplog):
    fake = FakeNpu(npu_bundle / "encoder.onnx", num_devices=0)
    with caplog.at_level(logging.INFO, logger="bertnpu"), SentenceEncoder(npu_bundle, qbruntime_module=fake) as enc:
        assert enc.backend == "onnx"
    assert "no Mobilint NPU found" in caplog.text


def test_forced_npu_without_a_device_says_so(npu_bundle):
    with pytest.raises(BackendUnavailableError, match="no Mobilint NPU found"):
        SentenceEncoder(npu_bundle, backend="npu", qbruntime_module=FakeNpu(npu_bundle / "encoder.onnx", num_devices=0))


def test_close_releases_every_npu_model(npu_bundle):
    fake = FakeNpu(npu_bundle / "encoder.onnx")
    enc = SentenceEncoder(npu_bundle, backend="npu", npu_cores=4, qbruntime_module=fake)
    assert len(fake.busy_cores()) == 4
    enc.close()
    assert fake.busy_cores() == set()


@pytest.mark.parametrize("mask_input", ["keep", "additive"])
def test_static_variants_with_a_mask_input(tiny_bundle, tmp_path, onnx_vectors, mask_input):
    bundle = bundle_with_placeholder_mxq(tiny_bundle, tmp_path / "bundle", npu={"mask_input": mask_input})
    fake = FakeNpu(bundle / "encoder.onnx", variants=(8, 16, 48), mask_input=mask_input)
    with SentenceEncoder(bundle, backend="npu", npu_cores=2, qbruntime_module=fake) as enc:
        vectors = enc.encode(SENTENCES, batch_size=4)
    assert cosine_rows(vectors, onnx_vectors).min() >= 0.99999
    assert {call.shapes[0][-2] for call in fake.calls} <= {8, 16, 48}


def test_the_placeholder_bundle_can_be_made_again(tiny_bundle, tmp_path):
    """The README's example runs twice: the second time it replaces its own copy."""
    target = tmp_path / "npu-bundle"
    bundle_with_placeholder_mxq(tiny_bundle, target)
    (target / "stale").write_text("from an earlier run")
    with pytest.raises(FileExistsError, match=f"{target}: already exists; pass overwrite=True"):
        bundle_with_placeholder_mxq(tiny_bundle, target)
    bundle_with_placeholder_mxq(tiny_bundle, target, overwrite=True)
    assert not (target / "stale").exists()
    with SentenceEncoder(target, backend="npu", qbruntime_module=FakeNpu(target / "encoder.onnx")) as encoder:
        assert encoder.encode("runs again").shape == (32,)
