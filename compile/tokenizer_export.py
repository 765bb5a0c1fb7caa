"""Write the bundle's tokenizer.json: the model's own, or a WordPiece tokenizer built from its vocab.txt."""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .errors import CompileError
from .files import read_json

_SPECIAL_DEFAULTS = {
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "mask_token": "[MASK]",
}


def export_tokenizer(model_folder: Path, out_path: Path, model_vocab_size: int) -> None:
    """Copy `model_folder`/tokenizer.json to `out_path`, or build one from vocab.txt + tokenizer_config.json.
    Fails when the tokenizer can produce ids beyond the model's `model_vocab_size` embedding rows."""
    source = model_folder / "tokenizer.json"
    if source.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(source))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise CompileError(f"{source}: cannot be loaded as a tokenizers JSON file ({exc})") from exc
        shutil.copyfile(source, out_path)
    else:
        vocab = model_folder / "vocab.txt"
        if not vocab.is_file():
            raise CompileError(f"{model_folder}: has neither tokenizer.json nor vocab.txt; cannot build the tokenizer")
        source = vocab
        tokenizer = build_wordpiece_tokenizer(
            vocab, read_json(model_folder / "tokenizer_config.json", required=False) or {}
        )
        tokenizer.save(str(out_path))
    tokenizer_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if tokenizer_size > model_vocab_size:
        raise CompileError(
            f"{source}: the tokenizer has {tokenizer_size} tokens but the model only {model_vocab_size} embedding rows"
        )


def build_wordpiece_tokenizer(vocab_path: Path, settings: dict) -> Tokenizer:
    """The tokenizer transformers' BertTokenizerFast builds from a vocab.txt, with `settings` from
    tokenizer_config.json (do_lower_case, strip_accents, tokenize_chinese_chars, special tokens)."""
    special = {key: str(settings.get(key) or default) for key, default in _SPECIAL_DEFAULTS.items()}
    vocab = WordPiece.read_file(str(vocab_path))
    missing = [token for token in special.values() if token not in vocab]
    if missing:
        raise CompileError(f"{vocab_path}: special tokens {missing} are not in the vocabulary")
    lowercase = bool(settings.get("do_lower_case", True))
    strip_accents = settings.get("strip_accents")  # None: follow lowercase, as BERT does

    tokenizer = Tokenizer(WordPiece(vocab, unk_token=special["unk_token"], max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls_token"], special["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(list(special.values()))
    return tokenizer
