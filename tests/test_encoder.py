"""SentenceEncoder on the tiny bundle: shapes, conventions, bad input, batching, threads."""

import logging
import os
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import in_forked_child
from tokenizers import Tokenizer as HfTokenizer
from vectors import cosine_rows

from bertnpu_runtime import BackendUnavailableError, BundleError, EncoderClosedError, SentenceEncoder
from bertnpu_runtime.backends.onnx import OnnxEncoder

SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The cat sat on the mat and looked out of the window for a long time.",
    "Hi",
    "",
    "Two dogs run through a field of tall grass while their owner watches.",
    "A man is playing a flute.",
]


@pytest.fixture(scope="module")
def encoder(tiny_bundle):
    with SentenceEncoder(tiny_bundle, backend="onnx") as enc:
        yield enc


def test_shapes_and_dtype(encoder):
    vectors = encoder.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), encoder.dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    single = encoder.encode(SENTENCES[0])
    assert single.shape == (encoder.dim,)
    np.testing.assert_allclose(single, vectors[0], atol=1e-6)


def test_empty_list_gives_zero_rows(encoder):
    empty = encoder.encode([])
    assert empty.shape == (0, encoder.dim) and empty.dtype == np.float32


def test_tuple_and_generator_like_sequences(encoder):
    np.testing.assert_allclose(encoder.encode(tuple(SENTENCES)), encoder.encode(SENTENCES), atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["ok", None], r"texts\[1\] must be a str, found NoneType"),
        (["ok", "fine", 3], r"texts\[2\] must be a str, found int"),
        ([b"bytes"], r"texts\[0\] must be a str, found bytes"),
        (None, r"texts must be a str or a sequence of str, found NoneType"),
        (42, r"found int"),
    ],
)
def test_bad_items_are_named(encoder, bad, message):
    with pytest.raises(TypeError, match=message):
        encoder.encode(bad)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(encoder, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        encoder.encode(SENTENCES, batch_size=batch_size)


def test_onnx_batches_default_to_32_sentences(tiny_bundle):
    """sentence-transformers' default batch_size, on ONNX and on a backend that names none."""
    batch_rows = []

    class Recording:
        def __init__(self) -> None:
            self._onnx = OnnxEncoder(tiny_bundle / "encoder.onnx")

        def run(self, hidden, attention_mask):
            batch_rows.append(len(hidden))
            return self._onnx.run(hidden, attention_mask)

    with SentenceEncoder(tiny_bundle, backend="onnx") as onnx:
        assert onnx.default_batch_size == 32
    with SentenceEncoder(tiny_bundle, backend=Recording()) as enc:
        assert enc.default_batch_size == 32
        enc.encode(["A man is playing a guitar."] * 100)
    assert max(batch_rows) == 32 and sum(batch_rows) == 100


def test_onnx_cuts_batches_where_padding_costs_more_than_a_call(tiny_bundle):
    """A long text among short ones gets a batch of its own on ONNX, rather than padding them all
    to its length; the vectors are those of the texts encoded one by one."""
    padded = []

    class Recording(OnnxEncoder):
        def submit(self, hidden, attention_mask, **hints):
            padded.append(attention_mask.shape)
            return super().submit(hidden, attention_mask, **hints)

    backend = Recording(tiny_bundle / "encoder.onnx", hidden_size=32)
    assert backend.hints.call_cost_tokens == pytest.approx(20.0 * (384 / 32) ** 2)
    texts = ["word " * 40] + ["a short one."] * 40  # at batch 64: 41 x the long length in one batch
    backend.hints = replace(backend.hints, call_cost_tokens=20.0)  # the MiniLM figure
    with SentenceEncoder(tiny_bundle, backend=backend) as enc:
        long, short = (int(n) for n in enc.tokenize(texts[:2]).lengths)
        vectors = enc.encode(texts, batch_size=64)
        assert sorted(padded) == [(1, long), (40, short)]
        alone = np.stack([enc.encode(text) for text in texts[:2]])
    np.testing.assert_allclose(vectors[:2], alone, atol=1e-5)


def test_vectors_do_not_depend_on_batch_composition(encoder):
    alone = np.stack([encoder.encode(s) for s in SENTENCES])
    for batch_size in (1, 2, 3, 64):
        together = encoder.encode(SENTENCES, batch_size=batch_size)
        assert cosine_rows(alone, together).min() >= 0.99999
        np.testing.assert_allclose(together, alone, atol=1e-5)


def test_input_order_is_kept(encoder):
    forward = encoder.encode(SENTENCES, batch_size=2)
    backward = encoder.encode(SENTENCES[::-1], batch_size=2)
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)


def test_normalize_embeddings(encoder):
    vectors = encoder.encode(SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_matches_sentence_transformers(tiny_model_dir, encoder):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    assert cosine_rows(encoder.encode(SENTENCES), reference).min() >= 0.99999


def test_very_long_text_is_truncated_quickly_and_reported(encoder, caplog):
    long_text = "word " * 20_000 + "end"  # 100k characters
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="bertnpu"):
        vectors = encoder.encode(["short one", long_text])
    elapsed = time.perf_counter() - start
    assert vectors.shape == (2, encoder.dim) and np.isfinite(vectors).all()
    assert elapsed < 5.0  # not a correctness bound: a guard against tokenizing 100k characters in full
    assert "1 of 2 texts were longer than" in caplog.text and "index 1" in caplog.text
    tokens = encoder.tokenize(["short one", long_text])
    assert tokens.truncated.tolist() == [False, True]
    assert tokens.lengths[1] == encoder.max_seq_length


def test_truncated_prefix_matches_full_tokenization(encoder):
    # The tokenizer cuts huge texts at whitespace before tokenizing; the kept tokens must be identical.
    text = " ".join(f"token{i % 7}" for i in range(5000))
    fast = encoder.pipeline.tokenizer.encode([text])
    library = HfTokenizer.from_file(str(encoder.bundle_dir / "tokenizer.json"))
    library.enable_truncation(max_length=encoder.max_seq_length)
    assert fast.input_ids[0].tolist() == library.encode(text).ids


def test_whitespace_only_huge_text(encoder):
    vectors = encoder.encode([" " * 100_000])
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize(
    "text", ["", " ", "\u200b\u200b", "😀🎉 émoji ñ", "中文句子", "\x00\x01control", "a\ud800b", "\n\t\r"]
)
def test_odd_text_gives_a_vector(encoder, text):
    vector = encoder.encode(text)
    assert vector.shape == (encoder.dim,) and np.isfinite(vector).all()


def test_concurrent_encode_matches_sequential(encoder):
    inputs = [SENTENCES[i:] + SENTENCES[:i] for i in range(6)]
    expected = [encoder.encode(texts, batch_size=2) for texts in inputs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = encoder.encode(inputs[i], batch_size=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, atol=1e-6)


def test_a_forked_process_gets_an_error_not_a_hang(encoder):
    """The backend's threads do not survive fork(): encode() in the child must say so at once."""
    encoder.encode(SENTENCES)  # the backend's worker thread is running in this process
    answer = in_forked_child(lambda: str(encoder.encode(["in the child"]).shape))
    assert answer.startswith("RuntimeError") and f"opened in process {os.getpid()}" in answer and "forked" in answer
    assert encoder.encode(SENTENCES).shape == (len(SENTENCES), encoder.dim)  # the parent is unaffected


def test_properties_and_repr(encoder, tiny_bundle):
    assert encoder.backend == "onnx"
    assert encoder.max_seq_length == encoder.manifest.max_seq_length
    assert "backend='onnx'" in repr(encoder)


def test_closed_encoder_refuses_work(tiny_bundle):
    enc = SentenceEncoder(tiny_bundle, backend="onnx")
    enc.close()
    enc.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        enc.encode(["x"])


def test_auto_falls_back_to_onnx_and_says_why(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="bertnpu"), SentenceEncoder(tiny_bundle) as enc:
        assert enc.backend == "onnx"
    assert "ONNX Runtime" in caplog.text and "model.mxq" in caplog.text


def test_forced_npu_without_mxq_names_what_is_missing(tiny_bundle):
    with pytest.raises(BackendUnavailableError, match="model.mxq"):
        SentenceEncoder(tiny_bundle, backend="npu")


def test_int8_without_int8_file_names_it(tiny_bundle):
    with pytest.raises(BundleError, match="encoder.int8.onnx"):
        SentenceEncoder(tiny_bundle, backend="onnx", encoder_precision="int8")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "gpu"}, "backend must be one of"),
        ({"encoder_precision": "fp16"}, "encoder_precision must be one of"),
        ({"backend": "npu", "encoder_precision": "int8"}, "encoder_precision=.int8. selects an ONNX graph"),
    ],
)
def test_bad_options(tiny_bundle, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SentenceEncoder(tiny_bundle, **kwargs)


def test_many_chunks_keep_order_and_report_truncation(encoder, caplog):
    # batch_size 2 -> texts are tokenized 16 at a time; 70 texts span five chunks.
    texts = [SENTENCES[i % len(SENTENCES)] + f" number {i}" for i in range(70)]
    texts[41] = "word " * 100  # truncated, in the third chunk
    with caplog.at_level(logging.WARNING, logger="bertnpu"):
        together = encoder.encode(texts, batch_size=2)
    assert "1 of 70 texts were longer than" in caplog.text and "index 41" in caplog.text
    alone = np.stack([encoder.encode(t) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_an_open_backend_can_be_passed_in(tiny_bundle):
    class Counting(OnnxEncoder):
        calls = 0

        def submit(self, hidden, attention_mask, **hints):
            Counting.calls += 1
            return super().submit(hidden, attention_mask, **hints)

    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        expected = reference.encode(SENTENCES)
    backend = Counting(tiny_bundle / "encoder.onnx")
    with SentenceEncoder(tiny_bundle, backend=backend) as enc:
        np.testing.assert_allclose(enc.encode(SENTENCES), expected, atol=1e-6)
    assert Counting.calls >= 1  # used, then closed with the SentenceEncoder:
    with pytest.raises(EncoderClosedError, match="OnnxEncoder.submit.. called after close"):
        backend.submit(np.zeros((1, 2, 32), np.float32), np.ones((1, 2), np.int64))


# --- how texts become batches --------------------------------------------------------------------


def test_onnx_submit_gives_run_output_and_refuses_after_close(tiny_bundle):
    encoder = OnnxEncoder(tiny_bundle / "encoder.onnx", num_threads=1)
    hidden = np.random.default_rng(0).standard_normal((2, 5, 32)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(encoder.submit(hidden, mask).result(), encoder.run(hidden, mask))
    assert encoder.hints.bucket is None  # any lengths share a batch
    encoder.close()
    with pytest.raises(RuntimeError, match="after close"):
        encoder.submit(hidden, mask)


def test_progress_bar_counts_sentences(encoder, capsys):
    encoder.encode(["a b c", "hello there", "x"] * 30, batch_size=8, show_progress_bar=True)
    assert "90/90" in capsys.readouterr().err


def test_a_backend_with_only_run_works_and_a_bad_one_is_named(tiny_bundle):
    class RunOnly:
        def __init__(self) -> None:
            self._onnx = OnnxEncoder(tiny_bundle / "encoder.onnx")
            self.closed = False

        def run(self, hidden, attention_mask):
            return self._onnx.run(hidden, attention_mask)

        def close(self) -> None:
            self.closed = True

    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        expected = reference.encode(SENTENCES)
    backend = RunOnly()
    with SentenceEncoder(tiny_bundle, backend=backend) as enc:
        assert enc.backend == "RunOnly"
        np.testing.assert_allclose(enc.encode(SENTENCES, batch_size=3), expected, atol=1e-5)
    assert backend.closed
    with pytest.raises(TypeError, match="encoder backend with run.*found int"):
        SentenceEncoder(tiny_bundle, backend=42)


def test_batch_memory_is_kept_between_encodes_but_not_after_a_failure(tiny_bundle):
    class FailingOnce:
        """ONNX, except that call number `fail_at` raises."""

        def __init__(self) -> None:
            self._onnx = OnnxEncoder(tiny_bundle / "encoder.onnx")
            self.calls, self.fail_at = 0, None

        def run(self, hidden, attention_mask):
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("encoder failed")
            return self._onnx.run(hidden, attention_mask)

    texts = SENTENCES * 5
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        expected = reference.encode(texts, batch_size=3)
    backend = FailingOnce()
    with SentenceEncoder(tiny_bundle, backend=backend) as enc:
        np.testing.assert_allclose(enc.encode(texts, batch_size=3), expected, atol=1e-5)
        kept = enc.pipeline.kept_batch_memory_bytes
        assert kept > 0
        np.testing.assert_allclose(enc.encode(texts, batch_size=3), expected, atol=1e-5)
        assert enc.pipeline.kept_batch_memory_bytes == kept  # reused, not grown

        backend.fail_at = backend.calls + 3
        with pytest.raises(RuntimeError, match="encoder failed"):
            enc.encode(texts, batch_size=3)
        assert enc.pipeline.kept_batch_memory_bytes == 0  # its batches were not all given back: not reused
        np.testing.assert_allclose(enc.encode(texts, batch_size=3), expected, atol=1e-5)
