"""A fast path for BERT WordPiece tokenization of ASCII text, exact to the `tokenizers` library.

For a standard BERT tokenizer (BertNormalizer, BertPreTokenizer, WordPiece, "[CLS] $A [SEP]"), an
ASCII text is normalized by deleting control characters, turning tab/newline/return into spaces and
lower-casing; it is pre-tokenized into runs of letters and digits and single punctuation marks; and
each word maps to the same word pieces wherever it occurs. Pre-tokenization never joins across a
space, so the same holds for each space-separated chunk ("guitar." -> guitar, .): the ids of each
chunk are cached. Plain texts (printable ASCII without a special token such as "[MASK]") are
tokenized many at a time: joined into one string with a break chunk between them, lower-cased,
split and looked up in the cache by C loops (`str.split`, `map`, `np.fromiter`), with no Python
code per text or per word once the cache is warm. Other ASCII texts take `encode`, one at a time;
text that is not ASCII, or that contains a special token, goes through `tokenizers` as usual.
tests/test_wordpiece.py checks the paths give identical ids.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable

import numpy as np
from tokenizers import Tokenizer

# BertNormalizer(clean_text=True): control characters other than \t \n \r are deleted (\x0b and \x0c
# included: they are Unicode category Cc), and those three become spaces.
_CONTROL = [c for c in range(32) if chr(c) not in "\t\n\r"] + [127]
_CLEAN_TABLE = str.maketrans({"\t": " ", "\n": " ", "\r": " ", **{chr(c): None for c in _CONTROL}})

# After cleaning, ASCII text holds only printable characters; every printable ASCII character that is
# neither a letter, a digit nor a space is punctuation to BertPreTokenizer and stands alone.
_WORDS_LOWER = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")
_WORDS_CASED = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 ]")

# The cache grows with the vocabulary of the text seen; past this many chunks, misses are not stored.
# Longer chunks are rare (URLs, runs of symbols) and are never stored, which bounds the memory used.
_MAX_CACHED_CHUNKS = 500_000
_MAX_CACHED_CHUNK_CHARS = 48

# Between two joined plain texts. Its chunk, "\x00", is a control character, which no plain text
# holds; it maps to [SEP, CLS], closing one text and opening the next.
_TEXT_BREAK = " \x00 "


class _ChunkIds(dict):
    """chunk -> word-piece ids; a missing chunk is computed by `compute` (which may store it)."""

    def __init__(self, compute: Callable[[str], list[int]]) -> None:
        super().__init__()
        self._compute = compute

    def __missing__(self, chunk: str) -> list[int]:
        return self._compute(chunk)


class AsciiWordPiece:
    """Token ids of ASCII texts for a standard BERT tokenizer; `from_tokenizer` says whether one applies."""

    def __init__(self, tokenizer: Tokenizer, lowercase: bool, cls_id: int, sep_id: int, special: list[str]) -> None:
        self._model = tokenizer.model
        self._lowercase = lowercase
        self._words = _WORDS_LOWER if lowercase else _WORDS_CASED
        self._cls_id = cls_id
        self._sep_id = sep_id
        special = [s.lower() for s in special] if lowercase else special
        self._special = re.compile("|".join(map(re.escape, special))) if special else None
        # A text can hold a special token only if it holds the tokens' common prefix ("[" for BERT).
        self._special_prefix = os.path.commonprefix(special)
        self._chunk_ids = _ChunkIds(self._ids_of_chunk)
        self._chunk_ids[_TEXT_BREAK.strip()] = [sep_id, cls_id]

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> AsciiWordPiece | None:
        """The fast path for this tokenizer, or None when its pipeline is not the standard BERT one."""
        config = json.loads(tokenizer.to_str())
        normalizer = config.get("normalizer") or {}
        pre_tokenizer = config.get("pre_tokenizer") or {}
        model = config.get("model") or {}
        if (
            normalizer.get("type") != "BertNormalizer"
            or not normalizer.get("clean_text")
            or pre_tokenizer.get("type") != "BertPreTokenizer"
            or model.get("type") != "WordPiece"
        ):
            return None
        ends = _cls_sep_ids(config.get("post_processor") or {})
        if ends is None:
            return None
        special = [token["content"] for token in config.get("added_tokens", [])]
        return cls(tokenizer, bool(normalizer.get("lowercase")), *ends, special)

    def not_plain(self, texts: list[str]) -> list[int]:
        """Indices of the texts `encode_plain` cannot take: not printable ASCII, or holding a special
        token. C loops over the texts, and a regex search only in the texts that hold the specials' prefix."""
        count = len(texts)
        plain = np.fromiter(map(str.isascii, texts), dtype=bool, count=count)
        plain &= np.fromiter(map(str.isprintable, texts), dtype=bool, count=count)
        if self._special is not None and self._may_hold_special("".join(texts)):  # a false alarm only costs time
            searched = list(map(str.lower, texts)) if self._lowercase else texts
            holds_prefix = np.fromiter(map(str.__contains__, searched, itertools.repeat(self._special_prefix)), bool, count)
            for i in np.flatnonzero(holds_prefix & plain).tolist():
                plain[i] = self._special.search(searched[i]) is None
        return np.flatnonzero(~plain).tolist()

    def _may_hold_special(self, text: str) -> bool:
        """False when `text` cannot hold a special token: it lacks the tokens' common prefix."""
        return self._special_prefix in (text.lower() if self._lowercase else text)

    def encode_plain(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 [total], lengths int64 [texts], truncated bool [texts]) of plain texts, back to
        back with [CLS]/[SEP], each cut to max_length tokens."""
        if not texts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool)
        joined = _TEXT_BREAK.join(texts)
        if self._lowercase:
            joined = joined.lower()
        pieces = itertools.chain.from_iterable(map(self._chunk_ids.__getitem__, joined.split()))
        ids = np.fromiter(itertools.chain((self._cls_id,), pieces, (self._sep_id,)), dtype=np.int64)
        ends = np.flatnonzero(ids == self._sep_id)  # [SEP] comes only from the breaks: specials are not plain
        if len(ends) != len(texts):
            raise AssertionError(f"{len(ends)} [SEP] tokens for {len(texts)} texts: a text was not plain")
        lengths = np.diff(ends, prepend=-1)
        truncated = lengths > max_length
        if truncated.any():  # keep each text's first max_length - 1 tokens and its [SEP]
            position = np.arange(len(ids)) - np.repeat(ends - lengths + 1, lengths)
            ids = ids[(position < max_length - 1) | (ids == self._sep_id)]
            lengths = np.minimum(lengths, max_length)
        return ids, lengths, truncated

    def encode(self, text: str, max_length: int) -> tuple[list[int], bool] | None:
        """(ids with [CLS]/[SEP], truncated?) for an ASCII text, or None when the text needs `tokenizers`."""
        if not text.isascii():
            return None
        if not text.isprintable():  # tab, newline or another control character (rare)
            text = text.translate(_CLEAN_TABLE)
        if self._lowercase:
            text = text.lower()
        if self._special is not None and self._special_prefix in text and self._special.search(text):
            return None
        ids = [self._cls_id]
        for chunk in text.split():  # after cleaning, " " is the only ASCII whitespace left
            ids += self._chunk_ids[chunk]
        truncated = len(ids) > max_length - 1
        if truncated:
            del ids[max_length - 1 :]
        ids.append(self._sep_id)
        return ids, truncated

    def _ids_of_chunk(self, chunk: str) -> list[int]:
        """Word-piece ids of one space-free chunk: its words (runs of letters and digits, single
        punctuation marks), each through the WordPiece model."""
        ids = [token.id for word in self._words.findall(chunk) for token in self._model.tokenize(word)]
        if len(chunk) <= _MAX_CACHED_CHUNK_CHARS and len(self._chunk_ids) < _MAX_CACHED_CHUNKS:
            self._chunk_ids[chunk] = ids
        return ids


def _cls_sep_ids(post_processor: dict) -> tuple[int, int] | None:
    """[CLS] and [SEP] ids when the post-processor wraps a single sequence as "[CLS] $A [SEP]"."""
    if post_processor.get("type") == "BertProcessing":
        return post_processor["cls"][1], post_processor["sep"][1]
    if post_processor.get("type") != "TemplateProcessing":
        return None
    single = post_processor.get("single", [])
    if len(single) != 3 or "Sequence" not in single[1]:
        return None
    first, last = single[0].get("SpecialToken", {}).get("id"), single[2].get("SpecialToken", {}).get("id")
    specials = post_processor.get("special_tokens", {})
    if first not in specials or last not in specials:
        return None
    if len(specials[first]["ids"]) != 1 or len(specials[last]["ids"]) != 1:
        return None
    return specials[first]["ids"][0], specials[last]["ids"][0]
