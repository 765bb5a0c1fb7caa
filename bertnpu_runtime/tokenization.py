"""Tokenize sentences with the bundle's `tokenizers` file, truncating to the bundle's max length."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HfTokenizer

from .errors import BundleError
from .wordpiece import AsciiWordPiece

# Texts longer than this many characters per allowed token are tokenized from a prefix first
# (cut at whitespace), so a huge input costs a few milliseconds instead of seconds.
_CHARS_PER_TOKEN_BOUND = 32
_SURROGATES = re.compile("[\ud800-\udfff]")
# About 0.2 ms of tokenizing between two pauses (see Tokenizer._fast_rows).
_TEXTS_PER_GIL_YIELD = 48


@dataclass(frozen=True)
class TokenizedBatch:
    """Token ids of a batch, right-padded to its longest member."""

    input_ids: np.ndarray  # int64 [batch, seq]
    attention_mask: np.ndarray  # int64 [batch, seq], 1 = real token
    lengths: np.ndarray  # int64 [batch], real tokens per sentence (with [CLS]/[SEP])
    truncated: np.ndarray  # bool [batch], True where the text had more than max_seq_length tokens


@dataclass(frozen=True)
class UnpaddedTokens:
    """Token ids of several texts back to back, unpadded; `padded(rows)` makes a batch of some of them."""

    ids: np.ndarray  # int64 [total tokens], text after text
    lengths: np.ndarray  # int64 [texts], tokens per text (with [CLS]/[SEP])
    truncated: np.ndarray  # bool [texts], True where the text had more than max_seq_length tokens
    starts: np.ndarray = field(init=False, repr=False)  # int64 [texts], where each text's ids begin

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", np.cumsum(self.lengths) - self.lengths)

    def padded(self, rows: np.ndarray | None = None) -> TokenizedBatch:
        """The texts `rows` (default: all, in order), right-padded to the longest of them."""
        pick = slice(None) if rows is None else rows
        lengths, starts, truncated = self.lengths[pick], self.starts[pick], self.truncated[pick]
        seq_len = int(lengths.max()) if len(lengths) else 0
        keep = np.arange(seq_len) < lengths[:, None]  # [batch, seq]
        positions = np.where(keep, starts[:, None] + np.arange(seq_len), 0)  # index into ids; 0 where padding
        input_ids = np.where(keep, self.ids[positions], 0)
        return TokenizedBatch(input_ids, keep.astype(np.int64), lengths, truncated)


def validate_texts(texts: Iterable[str]) -> list[str]:
    """Return texts as a list, or raise TypeError naming the first item that is not a str."""
    if isinstance(texts, (str, bytes, Mapping, Set)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a sequence of str, found {type(texts).__name__}")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, found {type(text).__name__} ({text!r:.40})")
    return texts


class Tokenizer:
    """The bundle's tokenizer, truncating at `max_seq_length` tokens (with [CLS] and [SEP]), not padding.

    ASCII text of a standard BERT tokenizer takes the exact fast path in wordpiece.py; everything
    else goes through the `tokenizers` library.
    """

    def __init__(self, path: str | Path, max_seq_length: int) -> None:
        try:
            self._tokenizer = _HfTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(path, f"cannot be loaded as a tokenizers JSON file ({exc})") from exc
        self.max_seq_length = max_seq_length
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_seq_length)
        self._fast = AsciiWordPiece.from_tokenizer(self._tokenizer)
        self._char_bound = max_seq_length * _CHARS_PER_TOKEN_BOUND

    def encode(self, texts: list[str]) -> TokenizedBatch:
        """Tokenize already-validated texts, padded. An empty list gives arrays with zero rows."""
        return self.encode_unpadded(texts).padded()

    def encode_unpadded(self, texts: list[str]) -> UnpaddedTokens:
        """Tokenize already-validated texts, without padding them to a common length."""
        rows = self._fast_rows(texts) if self._fast else [None] * len(texts)
        slow = [i for i, row in enumerate(rows) if row is None]
        if slow:
            for i, row in zip(slow, self._library_ids([texts[i] for i in slow])):
                rows[i] = row
        lengths = np.fromiter(map(len, (ids for ids, _ in rows)), dtype=np.int64, count=len(rows))
        ids = np.fromiter(itertools.chain.from_iterable(ids for ids, _ in rows), dtype=np.int64, count=int(lengths.sum()))
        truncated = np.fromiter((cut for _, cut in rows), dtype=bool, count=len(rows))
        return UnpaddedTokens(ids, lengths, truncated)

    def _fast_rows(self, texts: list[str]) -> list[tuple[list[int], bool] | None]:
        """The fast path over texts, pausing every _TEXTS_PER_GIL_YIELD texts to let other threads run.

        This loop is pure Python: without a pause it holds the GIL for the whole switch interval
        (5 ms) while NPU worker threads, their calls done, wait for it to start the next ones.
        """
        rows = []
        for start in range(0, len(texts), _TEXTS_PER_GIL_YIELD):
            rows += [self._fast_ids(text) for text in texts[start : start + _TEXTS_PER_GIL_YIELD]]
            time.sleep(0)  # releases the GIL
        return rows

    def _fast_ids(self, text: str) -> tuple[list[int], bool] | None:
        bounded = self._bounded(text)
        row = self._fast.encode(bounded, self.max_seq_length)
        if row is not None and bounded is not text and not row[1]:
            row = self._fast.encode(text, self.max_seq_length)
        return row

    def _library_ids(self, texts: list[str]) -> list[tuple[list[int], bool]]:
        bounded = [self._bounded(t) for t in texts]
        try:
            encodings = self._tokenizer.encode_batch_fast(bounded)
        except TypeError:  # a lone surrogate ("\ud800") cannot cross into Rust; it is not valid Unicode text
            texts = [_replace_surrogates(t) for t in texts]
            bounded = [self._bounded(t) for t in texts]
            encodings = self._tokenizer.encode_batch_fast(bounded)
        rows = []
        for encoding, text, prefix in zip(encodings, texts, bounded):
            if prefix is not text and not encoding.overflowing:
                encoding = self._tokenizer.encode(text)
            rows.append((encoding.ids, bool(encoding.overflowing)))
        return rows

    def _bounded(self, text: str) -> str:
        """A whitespace-cut prefix of a very long text. Whole words only, so its tokens are a prefix of
        the text's, and the same as the text's first max_seq_length tokens whenever the prefix still overflows."""
        if len(text) <= self._char_bound:
            return text
        cut = text.rfind(" ", 0, self._char_bound)
        return text[:cut] if cut > 0 else text


def _replace_surrogates(text: str) -> str:
    """Replace code points UTF-8 cannot carry (lone surrogates) with U+FFFD, the replacement character."""
    return _SURROGATES.sub("\ufffd", text)
