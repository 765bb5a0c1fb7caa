"""TEI's truncation_direction "left": a long text keeps its last tokens, exactly as `tokenizers`
truncating on the left gives them, for WordPiece, BPE and Unigram tokenizers; a huge text costs
bounded work, as with the first tokens (test_huge_texts.py)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer as HfTokenizer

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.tokenize import Tokenizer, TokenRows

MAX_LENGTH = 48
CAP = MAX_LENGTH * 1024  # characters per allowed token, at most (tokenizer.py's _CHARS_PER_TOKEN_CAP)
TEXTS = {
    "short": "a short one",
    "long": "the dog runs in the park, then home. " * 30,
    "huge, words": "word " * 100_000 + "and this is how it ends",
    "huge, one word then words": "x" * 200_000 + " the tail words",
    "huge, punctuation": "a,b.c;" * 50_000 + " end",
    "huge, CJK": "天気" * 100_000 + " 終わり",
}
IN_CAP = {"run of emoji": "🎸" * (6 * CAP) + " a dog runs"}  # past the cap: cut short, reported truncated


def tokenizer_files(tiny_bundle, family_models) -> dict[str, str]:
    return {
        "wordpiece": str(tiny_bundle / "tokenizer.json"),
        "bpe": str(family_models["roberta"][1] / "tokenizer.json"),
        "unigram": str(family_models["xlm-roberta"][1] / "tokenizer.json"),
    }


def rows_of(tokens: TokenRows) -> list[list[int]]:
    return [tokens.ids[start : start + length].tolist() for start, length in zip(tokens.starts, tokens.lengths)]


def keeping_the_end(path: str) -> HfTokenizer:
    library = HfTokenizer.from_file(path)
    library.no_padding()
    library.enable_truncation(max_length=MAX_LENGTH, direction="left")
    return library


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_left_truncation_keeps_the_last_tokens_as_tokenizers_does(kind, tiny_bundle, family_models):
    path = tokenizer_files(tiny_bundle, family_models)[kind]
    library = keeping_the_end(path)
    texts = list(TEXTS.values())
    tokens = Tokenizer(path, MAX_LENGTH).encode_unpadded(texts, truncation_direction="left")
    expected = library.encode_batch(texts)
    assert rows_of(tokens) == [encoding.ids for encoding in expected]
    # A text over the cap is reported truncated whatever its tokens, as in either direction (test_huge_texts.py).
    assert tokens.truncated.tolist() == [bool(e.overflowing) or len(t) > CAP for e, t in zip(expected, texts)]
    right = Tokenizer(path, MAX_LENGTH).encode_unpadded(texts)
    assert rows_of(right)[1] != rows_of(tokens)[1]  # the long text: its first tokens, not its last


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_pairs_cut_on_the_left_as_tokenizers_does(kind, tiny_bundle, family_models):
    path = tokenizer_files(tiny_bundle, family_models)[kind]
    pairs = [("a query", text) for text in TEXTS.values()] + [(TEXTS["long"], "a short answer")]
    tokens = Tokenizer(path, MAX_LENGTH).encode_pairs(pairs, truncation_direction="left")
    expected = keeping_the_end(path).encode_batch(pairs)
    assert rows_of(tokens) == [encoding.ids for encoding in expected]


def test_a_huge_text_is_bounded_and_one_cut_at_the_cap_is_reported_truncated(tiny_bundle):
    tokenizer = Tokenizer(tiny_bundle / "tokenizer.json", MAX_LENGTH)
    seen: list[int] = []
    inner = tokenizer._end_keeping()

    class Spy:  # records the longest text the library is given
        def __getattr__(self, name):
            method = getattr(inner, name)

            def recorded(items, *args, **kwargs):
                seen.extend(len(item) for item in (items if isinstance(items, list) else [items]))
                return method(items, *args, **kwargs)

            return recorded

    tokenizer._left = Spy()
    tokens = tokenizer.encode_unpadded([*TEXTS.values(), *IN_CAP.values()], truncation_direction="left")
    assert max(seen) <= CAP
    assert tokens.truncated.tolist()[-1] is True
    assert (
        rows_of(tokens)[-1] == keeping_the_end(str(tiny_bundle / "tokenizer.json")).encode(IN_CAP["run of emoji"]).ids
    )


def test_the_server_embeds_a_text_by_its_last_tokens_with_truncation_direction_left(tiny_bundle):
    from serving import ServerProcess

    text = TEXTS["long"] + " and at last the cat sleeps"
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        pipeline = reference.pipeline
        ids = keeping_the_end(str(tiny_bundle / "tokenizer.json")).encode(text).ids
        rows = TokenRows.from_lists([ids], [True])
        expected = pipeline.encode(rows, 8, normalize=True).vectors
        first_tokens = reference.encode([text], normalize_embeddings=True)
    process = ServerProcess(tiny_bundle)
    try:
        for name in ("left", "Left"):
            body = {"inputs": [text], "truncate": True, "truncation_direction": name}
            answer = httpx.post(f"{process.url}/embed", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(np.array(answer.json()), expected, atol=1e-5)
        similarity = httpx.post(
            f"{process.url}/similarity",
            json={
                "inputs": {"source_sentence": text, "sentences": [text]},
                "parameters": {"truncate": True, "truncation_direction": "left"},
            },
            timeout=30,
        )
        assert similarity.json() == pytest.approx([1.0], abs=1e-5)
        assert not np.allclose(expected, first_tokens, atol=1e-3)  # the two directions differ here
        wrong = httpx.post(f"{process.url}/embed", json={"inputs": "a", "truncation_direction": "up"}, timeout=30)
        assert wrong.status_code == 422 and "truncation_direction" in wrong.text
    finally:
        process.stop()
