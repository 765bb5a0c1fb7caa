"""The ASCII fast path gives exactly the ids (and truncation flags) of the `tokenizers` library."""

import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as LibraryTokenizer

from bertnpu_runtime.data import STSB_DEV_FILE, STSB_TRAIN_FILE, read_stsb_pairs
from bertnpu_runtime.tokenize import Tokenizer, TokenRows
from bertnpu_runtime.tokenize import tokenizer as tokenization
from bertnpu_runtime.tokenize.wordpiece import FastWordPiece

MAX_LENGTH = 32  # short, so truncation is exercised often

EDGE_CASES = [
    "",
    " ",
    "Hello, WORLD!!",
    "hello [MASK] world",
    "[CLS] [SEP] [PAD] [UNK]",
    "[mask] in lower case",
    "a\x0bb\x0cc\x1fd\x7fe\x00f",
    "tab\there\nnew\rline",
    "x" * 150,  # longer than WordPiece's max_input_chars_per_word: [UNK]
    "don't stop-believing; e.g. U.S.A. $5.00 50% a+b=c <tag> {x} ~`^|\\",
    "word " * 40,
    "unbelievably antidisestablishmentarianism",
    "see https://example.com/a-very/long_path?with=query&and=more#frag and https://example.com/a-very/long_path?with=query&and=more#frag",
    "tab-joined\tchunks\tand.punctuation,inside\x00chunks",
]


def library_tokenizer(path: Path) -> LibraryTokenizer:
    tokenizer = LibraryTokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH)
    return tokenizer


def assert_same_ids(tokenizer: Tokenizer, library: LibraryTokenizer, texts: list[str]) -> None:
    batch = tokenizer.encode(texts)
    for row, text in enumerate(texts):
        expected = library.encode(text)
        assert batch.input_ids[row, : batch.lengths[row]].tolist() == expected.ids, repr(text)
        assert bool(batch.truncated[row]) == bool(expected.overflowing), repr(text)
        assert batch.attention_mask[row].sum() == len(expected.ids)


@pytest.fixture(scope="module", params=["default", "tiny"])
def tokenizer_file(request, default_bundle, tiny_bundle) -> Path:
    return (default_bundle if request.param == "default" else tiny_bundle) / "tokenizer.json"


def test_fast_path_applies_to_bert_tokenizers(tokenizer_file):
    assert FastWordPiece.from_tokenizer(LibraryTokenizer.from_file(str(tokenizer_file))) is not None


def test_edge_cases(tokenizer_file):
    assert_same_ids(Tokenizer(tokenizer_file, MAX_LENGTH), library_tokenizer(tokenizer_file), EDGE_CASES)


def test_every_stsb_sentence(tokenizer_file, stsb_dir):
    texts = [
        s for name in (STSB_TRAIN_FILE, STSB_DEV_FILE) for a, b, _ in read_stsb_pairs(stsb_dir / name) for s in (a, b)
    ]
    assert len(texts) > 14_000
    assert_same_ids(Tokenizer(tokenizer_file, MAX_LENGTH), library_tokenizer(tokenizer_file), texts)


def test_plain_and_other_texts_mixed_across_groups(tokenizer_file, stsb_dir):
    """Plain texts go many at a time and the others one by one; ids come back in input order, over
    several groups of _TEXTS_PER_GIL_YIELD texts."""
    stsb = [a for a, _, _ in read_stsb_pairs(stsb_dir / STSB_DEV_FILE)[:600]]
    huge = "an overlong text, " * 2_000  # over the character bound: tokenized from a prefix
    others = EDGE_CASES + ["Ünïcode", "(εισιτηριον)", "naïve [MASK]", huge, "plain again"]
    texts = [
        text
        for i, plain in enumerate(stsb)
        for text in ([plain, others[i // 20 % len(others)]] if i % 20 == 0 else [plain])
    ]
    assert len(texts) > 3 * tokenization._TEXTS_PER_GIL_YIELD
    assert_same_ids(Tokenizer(tokenizer_file, MAX_LENGTH), library_tokenizer(tokenizer_file), texts)


@pytest.mark.parametrize("groups", [1, 3])
def test_the_gil_pause_comes_between_groups_only(tokenizer_file, monkeypatch, groups):
    """A request of a few texts (the server tokenizes one per request) pauses nowhere; a long list
    pauses between each two groups."""
    pauses = []
    monkeypatch.setattr(tokenization, "_release_gil", lambda: pauses.append(1))
    texts = [f"plain text number {i}." for i in range(groups * tokenization._TEXTS_PER_GIL_YIELD)]
    rows = Tokenizer(tokenizer_file, MAX_LENGTH).encode_unpadded(texts)
    assert len(rows) == len(texts) and len(pauses) == groups - 1


def test_only_plain_texts_take_the_joined_path(default_bundle):
    fast = FastWordPiece.from_tokenizer(LibraryTokenizer.from_file(str(default_bundle / "tokenizer.json")))
    texts = ["plain text.", "Ünïcode", "tab\there", "a [MASK] b", "a [Mask] b", "[brackets] only", "", "no\u00a0break"]
    assert fast.not_plain(texts) == [2, 3, 4, 7]
    assert fast.not_plain(["plain", "texts"]) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=string.printable + "\x00\x07\x0b\x1b\x7f[]", max_size=80), max_size=6))
def test_random_ascii(default_bundle, texts):
    path = default_bundle / "tokenizer.json"
    assert_same_ids(Tokenizer(path, MAX_LENGTH), library_tokenizer(path), texts)


# Characters where Python's and BertNormalizer's ideas of case, accents and spaces might part.
TRICKY = list(
    "ÀÉÎõüçñßǅİıΣσςﬁＡａ中文日本語한국어العربيةעבריתไทย😀\u0301\u0308\u00a0\u2003\u200b\u200d\u00ad\u2028\u3000\ufeff"
)


# Python's str.lower gives "οδος" for "ΟΔΟΣ" (final sigma); BertNormalizer gives "οδοσ", other ids.
UNICODE_CASES = [
    "ΟΔΟΣ ΚΑΙ ΣΟΦΙΑ.",
    "İstanbul Straße ﬁne",
    "naïve café, Ünïcode!",
    "中文字 text 日本",
    "e\u0301 \u0301x",
    "emoji 😀 here",
]


def test_unicode_cases(tokenizer_file):
    texts = UNICODE_CASES + ["plain ascii between"] + [t.upper() for t in UNICODE_CASES]
    assert_same_ids(Tokenizer(tokenizer_file, MAX_LENGTH), library_tokenizer(tokenizer_file), texts)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(
            alphabet=st.sampled_from(TRICKY + list(string.printable)) | st.characters(exclude_categories=("Cs",)),
            max_size=40,
        ),
        max_size=8,
    )
)
def test_random_unicode(default_bundle, tiny_bundle, texts):
    for bundle in (default_bundle, tiny_bundle):
        path = bundle / "tokenizer.json"
        assert_same_ids(Tokenizer(path, MAX_LENGTH), library_tokenizer(path), texts)


def test_non_bert_tokenizer_has_no_fast_path():
    from tokenizers import models, pre_tokenizers

    tokenizer = LibraryTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    assert FastWordPiece.from_tokenizer(tokenizer) is None


def test_unpadded_tokens_pad_any_subset_like_encode(default_bundle):
    tokenizer = Tokenizer(default_bundle / "tokenizer.json", MAX_LENGTH)
    texts = EDGE_CASES + ["a", "two words", "Ünïcode text, slow path"]
    tokens = tokenizer.encode_unpadded(texts)
    assert tokens.ids.ndim == 1 and len(tokens.ids) == tokens.lengths.sum()
    for rows in ([3, 0, 7], [1, 0], [len(texts) - 1], list(range(len(texts)))[::-1]):
        got, expected = tokens.padded(np.array(rows)), tokenizer.encode([texts[i] for i in rows])
        for name in ("input_ids", "attention_mask", "lengths", "truncated"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    empty = tokenizer.encode([])
    assert empty.input_ids.shape == (0, 0) and empty.lengths.shape == (0,)


def test_unpadded_tokens_take_and_concatenate_keep_each_texts_ids(default_bundle):
    tokenizer = Tokenizer(default_bundle / "tokenizer.json", MAX_LENGTH)
    texts = EDGE_CASES + ["a", "two words"]
    tokens = tokenizer.encode_unpadded(texts)
    first, second = np.array([5, 0, 10]), np.array([len(texts) - 1, 3])
    joined = TokenRows.concatenate([tokens.take(first), tokens.take(second)])
    expected = tokenizer.encode([texts[i] for i in [*first, *second]])
    got = joined.padded()
    for name in ("input_ids", "attention_mask", "lengths", "truncated"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    assert len(tokens.take(np.array([], dtype=np.int64)).ids) == 0


LONG_TEXTS = [
    "中文字" * 2_000,  # no spaces: cut between ideographs
    "word\u00a0" * 2_000,  # no ASCII space: cut at the NBSP
    "a" * 3_000,  # one over-long word: [UNK] however it is cut
    "caf\u00e9," * 1_000,  # cut before a comma, accents stripped after
    "x" * 1_020 + " tail",  # the word start is 5 characters past the bound's search
    "ab\x1ccd" * 500,  # control characters are deleted inside a word, so never a cut point
]


def test_long_texts_are_cut_at_a_word_start_with_the_library_s_ids(default_bundle, monkeypatch):
    """Only a bounded prefix reaches `tokenizers`, and its ids are the whole text's first ones."""
    tokenizer = Tokenizer(default_bundle / "tokenizer.json", MAX_LENGTH)
    seen: list[int] = []
    real = tokenizer._tokenizer.encode_batch_fast
    monkeypatch.setattr(
        tokenizer._tokenizer, "encode_batch_fast", lambda texts: seen.extend(map(len, texts)) or real(texts)
    )
    assert_same_ids(tokenizer, library_tokenizer(default_bundle / "tokenizer.json"), LONG_TEXTS)
    assert seen and max(seen) <= MAX_LENGTH * tokenization._CHARS_PER_TOKEN_BOUND
