"""The first stage: texts to token rows (ids with [CLS]/[SEP], cut at max_seq_length).

tokenizer.py    Tokenizer: the bundle's `tokenizers` file, with the fast path for plain text
wordpiece.py    the fast path: exact BERT WordPiece for many texts at once
chunk_table.py  its cache of word-piece ids per space-free chunk
token_rows.py   TokenRows, the one form token data takes, and the padded TokenizedBatch
"""

from .token_rows import TokenizedBatch, TokenRows
from .tokenizer import Tokenizer, validate_texts

__all__ = ["TokenRows", "TokenizedBatch", "Tokenizer", "validate_texts"]
