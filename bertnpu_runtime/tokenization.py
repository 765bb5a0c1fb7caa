"""Tokenize sentences with the bundle's `tokenizers` file, truncating to the bundle's max length."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HfTokenizer

from .errors import BundleError

# Texts longer than this many characters per allowed token are tokenized from a prefix first
# (cut at whitespace), so a huge input costs a few milliseconds instead of seconds.
_CHARS_PER_TOKEN_BOUND = 32
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class TokenizedBatch:
    """Token ids of a batch, right-padded to its longest member."""

    input_ids: np.ndarray  # int64 [batch, seq]
    attention_mask: np.ndarray  # int64 [batch, seq], 1 = real token
    lengths: np.ndarray  # int64 [batch], real tokens per sentence (with [CLS]/[SEP])
    truncated: np.ndarray  # bool [batch], True where the text had more than max_seq_length tokens


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
    """A `tokenizers` tokenizer set to truncate at `max_seq_length` tokens and not to pad."""

    def __init__(self, path: str | Path, max_seq_length: int) -> None:
        try:
            self._tokenizer = _HfTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(path, f"cannot be loaded as a tokenizers JSON file ({exc})") from exc
        self.max_seq_length = max_seq_length
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_seq_length)
        self._char_bound = max_seq_length * _CHARS_PER_TOKEN_BOUND

    def encode(self, texts: list[str]) -> TokenizedBatch:
        """Tokenize already-validated texts. An empty list gives arrays with zero rows."""
        bounded = [self._bounded(t) for t in texts]
        try:
            encodings = self._tokenizer.encode_batch(bounded)
        except TypeError:  # a lone surrogate ("\ud800") cannot cross into Rust; it is not valid Unicode text
            encodings = self._tokenizer.encode_batch([_replace_surrogates(t) for t in bounded])
            texts = [_replace_surrogates(t) for t in texts]
        encodings = [self._retry_unbounded(e, t) for e, t in zip(encodings, texts)]
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        seq_len = int(lengths.max()) if len(encodings) else 0
        input_ids = np.zeros((len(encodings), seq_len), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            input_ids[row, : lengths[row]] = encoding.ids
        attention_mask = (np.arange(seq_len) < lengths[:, None]).astype(np.int64)
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(encodings))
        return TokenizedBatch(input_ids, attention_mask, lengths, truncated)

    def _bounded(self, text: str) -> str:
        """A whitespace-cut prefix of a very long text; whole words only, so its tokens are a prefix of the text's."""
        if len(text) <= self._char_bound:
            return text
        cut = text.rfind(" ", 0, self._char_bound)
        return text[:cut] if cut > 0 else text

    def _retry_unbounded(self, encoding, text: str):
        # The prefix gave the same first max_seq_length tokens only if it still overflowed.
        if len(text) > self._char_bound and not encoding.overflowing:
            return self._tokenizer.encode(text)
        return encoding


def _replace_surrogates(text: str) -> str:
    """Replace code points UTF-8 cannot carry (lone surrogates) with U+FFFD, the replacement character."""
    return _SURROGATES.sub("\ufffd", text)
