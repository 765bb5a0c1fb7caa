"""Tokenize sentences with the bundle's `tokenizers` file, truncating to the bundle's max length."""

from __future__ import annotations

import itertools
import json
import os
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Set
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HfTokenizer

from ..errors import BundleError
from .token_rows import TokenizedBatch, TokenRows
from .wordpiece import FastWordPiece

# Texts longer than this many characters per allowed token are tokenized from a prefix first
# (cut at whitespace), so a huge input costs a few milliseconds instead of seconds.
_CHARS_PER_TOKEN_BOUND = 32
# A text whose bounded prefix yields fewer tokens than max_seq_length (a run of emoji, combining
# marks or spaces: many characters, few tokens) is tokenized again from at most this many characters
# per allowed token; whatever lies beyond is left out and the text is reported as truncated.
_CHARS_PER_TOKEN_CAP = 1024
# Texts tokenized between two pauses (see Tokenizer._encode_plain).
_TEXTS_PER_GIL_YIELD = 192
# Lets a thread waiting for the GIL take it. time.sleep(0) would too, but sleeps for Linux's timer
# slack (50 us) where sched_yield takes about 1 us.
_release_gil = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def validate_texts(texts: Iterable[str]) -> list[str]:
    """Return texts as a list, or raise TypeError naming the first item that is not a str."""
    if isinstance(texts, (str, bytes, Mapping, Set)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a sequence of str, found {type(texts).__name__}")
    if getattr(texts, "ndim", None) == 0:  # a 0-d numpy array is iterable in type only
        raise TypeError("texts is a 0-d array: pass its text as a str (array.item()) or a list of str")
    texts = list(texts)
    if not all(map(isinstance, texts, itertools.repeat(str))):  # a C loop: a Python one costs 60 us per 1,000 texts
        index, text = next((i, t) for i, t in enumerate(texts) if not isinstance(t, str))
        raise TypeError(f"texts[{index}] must be a str, found {type(text).__name__} ({text!r:.40})")
    return texts


class Tokenizer:
    """The bundle's tokenizer, truncating at `max_seq_length` tokens (with [CLS] and [SEP]), not padding.

    Texts for a standard BERT tokenizer take the exact fast path in wordpiece.py where they can;
    the rest go through the `tokenizers` library.
    """

    def __init__(self, path: str | Path, max_seq_length: int) -> None:
        try:
            self._tokenizer = _HfTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(path, f"cannot be loaded as a tokenizers JSON file ({exc})") from exc
        self.max_seq_length = max_seq_length
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_seq_length)
        config = json.loads(self._tokenizer.to_str())  # parsed once: the fast path and the checks read it
        self._fast = FastWordPiece.from_tokenizer(self._tokenizer, config)
        self._bert_words = _splits_bert_words(config)
        self._largest_id = _largest_id(self._tokenizer, config)
        self._char_bound = max_seq_length * _CHARS_PER_TOKEN_BOUND
        self._char_cap = max_seq_length * _CHARS_PER_TOKEN_CAP
        self._left: _HfTokenizer | None = None  # truncating on the left, for TEI's truncation_direction

    def largest_id(self) -> int:
        """The largest token id this tokenizer can produce: its vocabulary, added tokens and the
        special tokens its post-processor inserts ([CLS], [SEP])."""
        return self._largest_id

    def describe(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict[str, object]]]:
        """Each text's tokens as TEI's /tokenize lists them: id, text, special, and the character
        offsets start/stop (None for special tokens); cut at max_seq_length like encode()."""
        encodings = self._tokenizer.encode_batch(
            [self._capped(t) for t in texts], add_special_tokens=add_special_tokens
        )
        return [
            [
                {
                    "id": i,
                    "text": token,
                    "special": bool(special),
                    "start": None if special else start,
                    "stop": None if special else stop,
                }
                for i, token, special, (start, stop) in zip(e.ids, e.tokens, e.special_tokens_mask, e.offsets)
            ]
            for e in encodings
        ]

    def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        """The text of each list of token ids."""
        return self._tokenizer.decode_batch(ids, skip_special_tokens=skip_special_tokens)

    def encode(self, texts: list[str]) -> TokenizedBatch:
        """Tokenize already-validated texts, padded. An empty list gives arrays with zero rows."""
        return self.encode_unpadded(texts).padded()

    def encode_unpadded(self, texts: list[str], truncation_direction: str = "right") -> TokenRows:
        """Tokenize already-validated texts, without padding them to a common length.

        Plain texts (see wordpiece.py) take the fast path many at a time; the others, one by one
        or through `tokenizers`. `truncation_direction` "left" keeps a long text's last tokens
        instead of its first (TEI's option; always through `tokenizers`).
        """
        if truncation_direction == "left":
            return _token_rows(self._library_ids(texts, keep_end=True))
        fast = self._fast
        if fast is None:
            return _token_rows(self._library_ids(texts))
        long = [i for i, text in enumerate(texts) if len(text) > self._char_bound]  # cut to a prefix first
        odd = sorted(set(fast.not_plain(texts) + long))  # the texts the joined path cannot take
        if not odd:
            return self._encode_plain(fast, texts)
        is_plain = np.ones(len(texts), dtype=bool)
        is_plain[odd] = False
        plain = np.flatnonzero(is_plain)
        plain_tokens = self._encode_plain(fast, [texts[i] for i in plain])
        odd_tokens = _token_rows(self._odd_rows(fast, [texts[i] for i in odd]))
        return TokenRows.interleave(len(texts), [(plain, plain_tokens), (np.array(odd, dtype=np.intp), odd_tokens)])

    def encode_pairs(self, pairs: list[tuple[str, str]], truncation_direction: str = "right") -> TokenRows:
        """Tokenize already-validated text pairs as the model's tokenizer joins them (its pair
        template: [CLS] a [SEP] b [SEP] with token types 0 then 1 for BERT, <s> a </s></s> b </s>
        for RoBERTa), cutting the longer text first to fit max_seq_length (`tokenizers`'
        longest_first, as transformers truncates pairs): at its end, or at its start with
        `truncation_direction` "left". Each text is bounded first, as encode's are."""
        tokenizer, bound, cap = self._cutting(keep_end=truncation_direction == "left")
        bounded = [(bound(a), bound(b)) for a, b in pairs]
        try:
            encodings = tokenizer.encode_batch_fast(bounded)
        except TypeError:  # a lone surrogate cannot cross into Rust
            pairs = [(_replace_surrogates(a), _replace_surrogates(b)) for a, b in pairs]
            bounded = [(bound(a), bound(b)) for a, b in pairs]
            encodings = tokenizer.encode_batch_fast(bounded)
        ids, types, cut = [], [], []
        for encoding, pair, parts in zip(encodings, pairs, bounded):
            capped = pair
            if parts != pair and not encoding.overflowing:  # a cut text turned out to fit after all
                capped = (cap(pair[0]), cap(pair[1]))
                encoding = tokenizer.encode(*capped)
            ids.append(encoding.ids)
            types.append(encoding.type_ids)
            cut.append(bool(encoding.overflowing) or capped != pair)
        return TokenRows.from_lists(ids, cut, types)

    def _encode_plain(self, fast: FastWordPiece, texts: list[str]) -> TokenRows:
        """Plain texts on the fast path, _TEXTS_PER_GIL_YIELD at a time with a pause between groups
        to let other threads run: without one, this holds the GIL for the whole switch interval
        (5 ms) while NPU worker threads, their calls done, wait for it to start the next ones.
        None after the last group: a caller of a few texts (the server's event loop, once per
        request) would otherwise wait to take the GIL back at every call."""
        groups = []
        for start in range(0, len(texts), _TEXTS_PER_GIL_YIELD):
            if start:
                _release_gil()
            groups.append(fast.encode_plain(texts[start : start + _TEXTS_PER_GIL_YIELD], self.max_seq_length))
        return TokenRows.concatenate(groups) if groups else TokenRows.empty()

    def _odd_rows(self, fast: FastWordPiece, texts: list[str]) -> list[tuple[list[int], bool]]:
        """Texts that are not plain: ASCII ones on the fast path one by one, the rest through `tokenizers`."""
        found = [self._fast_ids(fast, text) for text in texts]
        slow = [i for i, row in enumerate(found) if row is None]
        from_library = dict(zip(slow, self._library_ids([texts[i] for i in slow])))
        return [row if row is not None else from_library[i] for i, row in enumerate(found)]

    def _fast_ids(self, fast: FastWordPiece, text: str) -> tuple[list[int], bool] | None:
        bounded = self._bounded(text)
        row = fast.encode(bounded, self.max_seq_length)
        if row is not None and bounded is not text and not row[1]:
            capped = self._capped(text)
            row = fast.encode(capped, self.max_seq_length)
            if row is not None and capped is not text:
                row = (row[0], True)
        return row

    def _library_ids(self, texts: list[str], keep_end: bool = False) -> list[tuple[list[int], bool]]:
        """Through `tokenizers`: each text's first max_seq_length tokens, or its last (`keep_end`)."""
        tokenizer, bound, cap = self._cutting(keep_end)
        bounded = [bound(t) for t in texts]
        try:
            encodings = tokenizer.encode_batch_fast(bounded)
        except TypeError:  # a lone surrogate ("\ud800") cannot cross into Rust; it is not valid Unicode text
            texts = [_replace_surrogates(t) for t in texts]
            bounded = [bound(t) for t in texts]
            encodings = tokenizer.encode_batch_fast(bounded)
        rows = []
        for encoding, text, part in zip(encodings, texts, bounded):
            capped = text
            if part is not text and not encoding.overflowing:  # the part did not fill max_seq_length
                capped = cap(text)
                encoding = tokenizer.encode(capped)
            rows.append((encoding.ids, bool(encoding.overflowing) or capped is not text))
        return rows

    def _cutting(self, keep_end: bool) -> tuple[_HfTokenizer, Callable[[str], str], Callable[[str], str]]:
        """The tokenizer that keeps a long text's first tokens (or its last, `keep_end`), and the
        matching bound and cap of a very long text (_bounded and _capped, or their mirrors)."""
        if keep_end:
            return self._end_keeping(), self._bounded_suffix, self._capped_suffix
        return self._tokenizer, self._bounded, self._capped

    def _end_keeping(self) -> _HfTokenizer:
        """A copy of the tokenizer that truncates on the left (made on first use)."""
        if self._left is None:
            self._left = _HfTokenizer.from_str(self._tokenizer.to_str())
            self._left.enable_truncation(max_length=self.max_seq_length, direction="left")
        return self._left

    def _bounded(self, text: str) -> str:
        """A prefix of a very long text, cut where a BERT word starts, so its tokens are a prefix of
        the text's, and the same as the text's first max_seq_length tokens whenever the prefix still
        overflows. Any text then costs a bounded amount of work, with or without spaces."""
        if len(text) <= self._char_bound:
            return text
        if not self._bert_words:  # another pipeline's word starts are not known here: spaces only
            cut = text.rfind(" ", 0, self._char_bound)
            return text[:cut] if cut > 0 else self._capped(text)
        return text[: _word_start_before(text, self._char_bound)]

    def _bounded_suffix(self, text: str) -> str:
        """_bounded's mirror: a suffix of a very long text that starts where a word starts, so its
        last max_seq_length tokens are the text's whenever it still overflows."""
        if len(text) <= self._char_bound:
            return text
        return text[self._word_start_from(text, len(text) - self._char_bound) :]

    def _capped_suffix(self, text: str) -> str:
        """_capped's mirror: the text, or at most _CHARS_PER_TOKEN_CAP characters per allowed token
        of its end, starting where a word starts. A cut text is reported truncated."""
        if len(text) <= self._char_cap:
            return text
        return text[self._word_start_from(text, len(text) - self._char_cap) :]

    def _word_start_from(self, text: str, index: int) -> int:
        """The first index >= `index` where a word starts (a space for other tokenizers than
        BERT's), when one is near; else `index` itself."""
        end = min(len(text), index + _WORD_START_SEARCH)
        if not self._bert_words:
            space = text.find(" ", index, end)
            return space if space >= 0 else index
        return next((i for i in range(index, end) if _starts_word(text[i])), index)

    def _capped(self, text: str) -> str:
        """The text itself, or at most _CHARS_PER_TOKEN_CAP characters per allowed token of it, cut
        where a word starts (a space for other tokenizers) when one is near: what tokenizing a text
        whose bounded prefix did not fill max_seq_length may cost. A cut text is reported truncated."""
        if len(text) <= self._char_cap:
            return text
        if self._bert_words:
            return text[: _word_start_before(text, self._char_cap)]
        cut = text.rfind(" ", self._char_cap - _WORD_START_SEARCH, self._char_cap)
        return text[: cut if cut > 0 else self._char_cap]


# A cut looks this far back for a word start. A run this long without one is a single word of
# over 100 characters, which WordPiece maps to one [UNK] whether it is cut or not.
_WORD_START_SEARCH = 1000
# BERT's CJK ideograph blocks: BertNormalizer puts spaces around each such character.
_CJK_BLOCKS = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _largest_id(tokenizer: _HfTokenizer, config: dict) -> int:
    ids = [max(tokenizer.get_vocab(with_added_tokens=True).values(), default=0)]
    post_processor = config.get("post_processor") or {}
    for token in (post_processor.get("special_tokens") or {}).values():
        ids.extend(token.get("ids") or [])
    for name in ("cls", "sep"):  # BertProcessing keeps them as [token, id]
        pair = post_processor.get(name)
        if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], int):
            ids.append(pair[1])
    return max(ids)


def _splits_bert_words(config: dict) -> bool:
    """Whether the tokenizer splits words as BERT does: BertNormalizer with its CJK spacing, then
    BertPreTokenizer (whitespace and punctuation)."""
    normalizer = config.get("normalizer") or {}
    return (
        normalizer.get("type") == "BertNormalizer"
        and normalizer.get("handle_chinese_chars", True)
        and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
    )


def _word_start_before(text: str, limit: int) -> int:
    """The last index <= limit where BERT's pre-tokenizer starts a new word: a whitespace character,
    a punctuation mark or a CJK ideograph (each stands alone), or `limit` itself within an over-long word."""
    for index in range(limit, max(0, limit - _WORD_START_SEARCH), -1):
        if _starts_word(text[index]):
            return index
    return limit


def _starts_word(char: str) -> bool:
    """BertNormalizer's whitespace (" \t\n\r", Zs), BertPreTokenizer's punctuation (ASCII
    non-alphanumerics, P*) and CJK ideographs; not control characters, which are deleted inside a word."""
    if char in " \t\n\r":
        return True
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    category = unicodedata.category(char)
    if category == "Zs" or category.startswith("P"):
        return True
    return any(low <= code <= high for low, high in _CJK_BLOCKS)


def _token_rows(rows: list[tuple[list[int], bool]]) -> TokenRows:
    """TokenRows from (ids, truncated?) per text."""
    return TokenRows.from_lists([ids for ids, _ in rows], [cut for _, cut in rows])


def _replace_surrogates(text: str) -> str:
    """Join surrogate pairs given as two code units into the character they encode (as a UTF-16
    round trip would), and replace lone surrogates, which no UTF can carry, with U+FFFD."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
