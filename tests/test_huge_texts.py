"""Huge texts whose first part yields few tokens (a run of emoji, combining accents, NBSP or ZWSP):
tokenizing one costs work bounded by max_seq_length, not by its length, and a text cut short is
reported as truncated. (Before, such a text of 10 million characters took 17.7 s and 2.8 GB.)"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer as HfTokenizer

from bertnpu_runtime.tokenize import Tokenizer

MAX_LENGTH = 48
CAP = MAX_LENGTH * 1024  # characters per allowed token, at most (tokenizer.py's _CHARS_PER_TOKEN_CAP)
N = 6 * CAP
# Texts whose tokens beyond the cap add nothing: the library's tokens of the whole text are ours.
NOTHING_BEYOND = {
    "emoji run": "🎸" * N,
    "combining accents": "e" + "\u0301" * N,
    "NBSP only": "\u00a0" * N,
    "ZWSP only": "\u200b" * N,
    "words then spaces": "a dog runs " + " " * N,
}


class Spy:
    """A `tokenizers` tokenizer that records the longest text it was given."""

    def __init__(self, inner: HfTokenizer) -> None:
        self.inner, self.longest = inner, 0

    def encode(self, *texts: str, **options):
        self.longest = max([self.longest, *map(len, texts)])
        return self.inner.encode(*texts, **options)

    def encode_batch_fast(self, items, **options):
        for item in items:
            self.longest = max([self.longest, *map(len, item if isinstance(item, tuple) else [item])])
        return self.inner.encode_batch_fast(items, **options)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.fixture(params=["wordpiece fast path", "tokenizers library"])
def tokenizer(request, tiny_bundle):
    tokenizer = Tokenizer(tiny_bundle / "tokenizer.json", MAX_LENGTH)
    if request.param == "tokenizers library":
        tokenizer._fast = None  # every text through the library, as for a Unigram or BPE model
    tokenizer._tokenizer = Spy(tokenizer._tokenizer)
    return tokenizer


@pytest.mark.parametrize("case", list(NOTHING_BEYOND))
def test_a_huge_text_costs_a_bounded_tokenization_and_keeps_its_tokens(tokenizer, tiny_bundle, case):
    text = NOTHING_BEYOND[case]
    rows = tokenizer.encode_unpadded([text])
    assert tokenizer._tokenizer.longest <= CAP  # the library never saw more than the cap
    library = HfTokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    library.enable_truncation(max_length=MAX_LENGTH)
    assert rows.ids.tolist() == library.encode(text).ids  # the whole text's tokens, all the same


def test_a_text_cut_at_the_cap_is_reported_truncated(tokenizer):
    rows = tokenizer.encode_unpadded(["🎸" * N + " a dog runs", "a short one"])
    assert rows.truncated.tolist() == [True, False]
    assert tokenizer._tokenizer.longest <= CAP


def test_pairs_are_bounded_too(tokenizer):
    rows = tokenizer.encode_pairs([("a query", "\u00a0" * N + " the answer")])
    assert tokenizer._tokenizer.longest <= CAP and rows.truncated.tolist() == [True]
