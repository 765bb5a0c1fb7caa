"""A fast path for BERT WordPiece tokenization, exact to the `tokenizers` library.

A standard BERT tokenizer (BertNormalizer, BertPreTokenizer, WordPiece, "[CLS] $A [SEP]") normalizes
text character by character (control characters deleted, whitespace made " ", accents stripped,
lower case), pre-tokenizes it into words that never cross a space, and maps each word to the same
word pieces wherever it occurs. So a space-separated chunk ("guitar." -> guitar, .) has the same ids
wherever it occurs, and the ids of each chunk are cached (chunk_table.py).

Plain texts (printable, without a special token such as "[MASK]") are tokenized many at a time:
joined into one string with a break chunk between them, split and looked up in the cache by C loops
and NumPy gathers, with no Python code per text or per chunk once the cache is warm. Printable text
holds no whitespace but " " and no control character, so splitting at spaces is all the text-level
work. ASCII texts are lower-cased here and a new chunk goes through a regex and the WordPiece model;
the other plain texts are joined apart from them, not lower-cased (str.lower is BertNormalizer's
lower case on ASCII only), and a new chunk goes through the tokenizer's own normalizer,
pre-tokenizer and model. Other texts (tab, newline, control characters, special tokens) take
`encode` one at a time when they are ASCII, and `tokenizers` otherwise.
tests/test_wordpiece.py checks the paths give identical ids.
"""

from __future__ import annotations

import itertools
import json
import os
import re

import numpy as np
from tokenizers import Tokenizer

from .chunk_table import ChunkTable
from .token_rows import TokenRows

# BertNormalizer(clean_text=True): control characters other than \t \n \r are deleted (\x0b and \x0c
# included: they are Unicode category Cc), and those three become spaces.
_CONTROL = [c for c in range(32) if chr(c) not in "\t\n\r"] + [127]
_CLEAN_TABLE = str.maketrans({"\t": " ", "\n": " ", "\r": " ", **{chr(c): None for c in _CONTROL}})

# After cleaning, ASCII text holds only printable characters; every printable ASCII character that is
# neither a letter, a digit nor a space is punctuation to BertPreTokenizer and stands alone.
_WORDS_LOWER = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")
_WORDS_CASED = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 ]")

# Before, between and after joined plain texts. Its chunk, "\x00", is a control character, which no
# plain text holds; it maps to [SEP, CLS], closing one text and opening the next.
_TEXT_BREAK = " \x00 "


class FastWordPiece:
    """Token ids of texts for a standard BERT tokenizer; `from_tokenizer` says whether one applies."""

    def __init__(self, tokenizer: Tokenizer, lowercase: bool, cls_id: int, sep_id: int, special: list[str]) -> None:
        self._model = tokenizer.model
        self._normalizer = tokenizer.normalizer
        self._pre_tokenizer = tokenizer.pre_tokenizer
        self._lowercase = lowercase
        self._words = _WORDS_LOWER if lowercase else _WORDS_CASED
        self._cls_id = cls_id
        self._sep_id = sep_id
        special = [s.lower() for s in special] if lowercase else special
        self._special = re.compile("|".join(map(re.escape, special))) if special else None
        # A text can hold a special token only if it holds the tokens' common prefix ("[" for BERT).
        self._special_prefix = os.path.commonprefix(special)  # noqa: RUF071 - a prefix of characters is what is wanted
        self._ascii_chunks = ChunkTable(self._ids_of_ascii_chunk)  # keys lower-cased where the model is
        self._chunks = ChunkTable(self._ids_of_chunk)  # keys as written
        for table in (self._ascii_chunks, self._chunks):
            table.set_ids(_TEXT_BREAK.strip(), [sep_id, cls_id])

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, config: dict | None = None) -> FastWordPiece | None:
        """The fast path for this tokenizer, or None when its pipeline is not the standard BERT one.
        `config`: the tokenizer's JSON, parsed, when the caller has it already."""
        if config is None:
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
        """Indices of the texts `encode_plain` cannot take: not printable, or holding a special token.
        C loops over the texts, and a regex search only in the texts that hold the specials' prefix."""
        count = len(texts)
        plain = np.fromiter(map(str.isprintable, texts), dtype=bool, count=count)
        if self._special is not None and self._may_hold_special("".join(texts)):  # a false alarm only costs time
            searched = list(map(str.lower, texts)) if self._lowercase else texts
            holds_prefix = np.fromiter(
                map(str.__contains__, searched, itertools.repeat(self._special_prefix)), bool, count
            )
            for i in np.flatnonzero(holds_prefix & plain).tolist():
                plain[i] = self._special.search(searched[i]) is None
        return np.flatnonzero(~plain).tolist()

    def _may_hold_special(self, text: str) -> bool:
        """False when `text` cannot hold a special token: it lacks the tokens' common prefix."""
        return self._special_prefix in (text.lower() if self._lowercase else text)

    def encode_plain(self, texts: list[str], max_length: int) -> TokenRows:
        """The token rows of plain texts, back to back with [CLS]/[SEP], each cut to max_length tokens. ASCII and other texts go separately:
        only ASCII text may be lower-cased here."""
        is_ascii = np.fromiter(map(str.isascii, texts), dtype=bool, count=len(texts))
        if is_ascii.all():
            return self._encode_joined(texts, self._ascii_chunks, max_length)
        if not is_ascii.any():
            return self._encode_joined(texts, self._chunks, max_length)
        parts = []
        for rows, table in ((np.flatnonzero(is_ascii), self._ascii_chunks), (np.flatnonzero(~is_ascii), self._chunks)):
            parts.append((rows, self._encode_joined([texts[i] for i in rows], table, max_length)))
        return TokenRows.interleave(len(texts), parts)

    def _encode_joined(self, texts: list[str], table: ChunkTable, max_length: int) -> TokenRows:
        """encode_plain for texts that are all ASCII (the ASCII table) or none (the other)."""
        if not texts:
            return TokenRows.empty()
        joined = _TEXT_BREAK.join(["", *texts, ""])
        if table is self._ascii_chunks and self._lowercase:  # str.lower is BertNormalizer's lower case on ASCII only
            joined = joined.lower()
        ids = table.ids(joined.split())[1:-1]  # [SEP] [CLS] text [SEP] [CLS] ... [SEP] [CLS]
        ends = np.flatnonzero(ids == self._sep_id)  # [SEP] comes only from the breaks: specials are not plain
        if len(ends) != len(texts):
            raise AssertionError(f"{len(ends)} [SEP] tokens for {len(texts)} texts: a text was not plain")
        lengths = np.empty_like(ends)
        lengths[0] = ends[0] + 1
        np.subtract(ends[1:], ends[:-1], out=lengths[1:])
        if lengths.max() <= max_length:
            return TokenRows(ids, lengths, np.zeros(len(texts), dtype=bool))
        truncated = lengths > max_length  # keep each text's first max_length - 1 tokens and its [SEP]
        position = np.arange(len(ids)) - np.repeat(ends - lengths + 1, lengths)
        ids = ids[(position < max_length - 1) | (ids == self._sep_id)]
        lengths = np.minimum(lengths, max_length)
        return TokenRows(ids, lengths, truncated)

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
        ids = [self._cls_id, *self._ascii_chunks.ids(text.split()).tolist()]  # " " is the only whitespace left
        truncated = len(ids) > max_length - 1
        if truncated:
            del ids[max_length - 1 :]
        ids.append(self._sep_id)
        return ids, truncated

    def _ids_of_ascii_chunk(self, chunk: str) -> list[int]:
        """Word-piece ids of one space-free, printable ASCII chunk (lower-cased for an uncased model):
        its words (runs of letters and digits, single punctuation marks), each through the model."""
        return [token.id for word in self._words.findall(chunk) for token in self._model.tokenize(word)]

    def _ids_of_chunk(self, chunk: str) -> list[int]:
        """Word-piece ids of one space-free, printable chunk, through the tokenizer's own steps."""
        words = self._pre_tokenizer.pre_tokenize_str(self._normalizer.normalize_str(chunk))
        return [token.id for word, _ in words for token in self._model.tokenize(word)]


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
