"""A fast path for BERT WordPiece tokenization of ASCII text, exact to the `tokenizers` library.

For a standard BERT tokenizer (BertNormalizer, BertPreTokenizer, WordPiece, "[CLS] $A [SEP]"), an
ASCII text is normalized by deleting control characters, turning tab/newline/return into spaces and
lower-casing; it is pre-tokenized into runs of letters and digits and single punctuation marks; and
each word maps to the same word pieces wherever it occurs. Pre-tokenization never joins across a
space, so the same holds for each space-separated chunk ("guitar." -> guitar, .): the ids of each
chunk are cached, and a sentence costs one `str.split` and a dict lookup per chunk instead of a pass
through the whole `tokenizers` pipeline (3-4x faster on STS-B). Text that is not ASCII, or that
contains a special token such as "[MASK]", goes through `tokenizers` as usual.
tests/test_wordpiece.py checks the two paths give identical ids.
"""

from __future__ import annotations

import json
import os
import re

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
        self._chunk_ids: dict[str, list[int]] = {}

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
        cached = self._chunk_ids.get
        for chunk in text.split():  # after cleaning, " " is the only ASCII whitespace left
            chunk_ids = cached(chunk)
            ids += chunk_ids if chunk_ids is not None else self._ids_of_chunk(chunk)
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
