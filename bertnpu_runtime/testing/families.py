"""Random-weight models of each family and task, saved in the layout sentence-transformers reads
(and `python -m compile` takes), with tokenizers trained on the shipped STS-B text: WordPiece
(BERT, MPNet), Unigram (XLM-R, and BERT with XLM-R's tokenizer as in paraphrase-multilingual-MiniLM)
and byte-level BPE (RoBERTa). For tests (small shapes, the default) and benchmarks (`shape=` a real
model's). Needs torch and transformers (the compile extra); nothing reaches the network."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..data import read_sentences, stsb_file

HIDDEN = 48
LAYERS = 2
HEADS = 4
INTERMEDIATE = 96
MAX_SEQ_LENGTH = 40
VOCAB = 600
# Large enough that different texts get clearly different vectors from a random model.
INIT_RANGE = 0.25
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: pad 1, so positions start at 2


def training_text() -> list[str]:
    return read_sentences(stsb_file("stsb-en-train.csv"))[:3000]


def train_tokenizer(kind: str) -> Tokenizer:
    """A tokenizer of `kind` ("unigram", "bpe" or "mpnet-wordpiece") with RoBERTa's special tokens
    and pair template (<s> a </s></s> b </s>)."""
    texts = training_text()
    if kind == "unigram":  # XLM-R's shape: NFKC, Metaspace, Unigram
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=ROBERTA_SPECIALS, unk_token="<unk>")
    elif kind == "bpe":  # RoBERTa's shape: byte-level BPE
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB, special_tokens=ROBERTA_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    elif kind == "mpnet-wordpiece":  # MPNet's shape: BERT's normalizer and word pieces, RoBERTa's specials
        tokenizer = Tokenizer(models.WordPiece(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=ROBERTA_SPECIALS)
    else:
        raise ValueError(kind)
    tokenizer.train_from_iterator(texts, trainer)
    if kind == "bpe":
        tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
    return tokenizer


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _save_tokenizer(directory: Path, tokenizer: Tokenizer, family: str, max_seq_length: int = MAX_SEQ_LENGTH) -> int:
    """As transformers saves a fast tokenizer of the family's class (so AutoTokenizer reads it);
    returns its size with the tokens that class adds (CamemBERT's adds three)."""
    from transformers import (
        CamembertTokenizerFast,
        MPNetTokenizerFast,
        RobertaTokenizerFast,
        XLMRobertaTokenizerFast,
    )

    kind = {
        "xlm-roberta": XLMRobertaTokenizerFast,
        "bert-unigram": XLMRobertaTokenizerFast,  # paraphrase-multilingual-MiniLM: a BertModel, XLM-R's tokenizer
        "camembert": CamembertTokenizerFast,
        "roberta": RobertaTokenizerFast,
        "mpnet": MPNetTokenizerFast,
    }[family]
    specials = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>")
    fast = kind(tokenizer_object=tokenizer, pad_token="<pad>", mask_token="<mask>", **specials)
    fast.model_max_length = max_seq_length
    fast.save_pretrained(str(directory))
    return len(fast)


def _config(family: str, vocab_size: int, shape: dict[str, float] | None = None, positions: int = 64, **extra: object):
    """The family's config; `positions` usable positions (RoBERTa-likes and MPNet get two more)."""
    from transformers import BertConfig, CamembertConfig, MPNetConfig, RobertaConfig, XLMRobertaConfig

    sizes = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        initializer_range=INIT_RANGE,
        vocab_size=vocab_size,
        **extra,
    )
    sizes.update(shape or {})
    if family == "bert-unigram":
        return BertConfig(max_position_embeddings=positions, pad_token_id=1, **sizes)
    if family == "mpnet":
        return MPNetConfig(
            max_position_embeddings=positions + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2, **sizes
        )
    config_class = {"roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig, "camembert": CamembertConfig}[family]
    return config_class(
        max_position_embeddings=positions + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        **sizes,
    )


def write_embedding_model(
    directory: Path,
    family: str,
    tokenizer: Tokenizer,
    seed: int = 0,
    shape: dict[str, float] | None = None,
    max_seq_length: int = MAX_SEQ_LENGTH,
) -> Path:
    """A random embedding model of `family` ("bert-unigram", "roberta", "xlm-roberta", "camembert",
    "mpnet") with mean pooling, as a sentence-transformers folder; `shape` overrides the config's
    sizes (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size)."""
    import torch
    from transformers import AutoModel

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab_size = _save_tokenizer(directory, tokenizer, family, max_seq_length)
    config = _config(family, vocab_size, shape, positions=max(64, max_seq_length))
    model = AutoModel.from_config(config).eval()
    with torch.no_grad():  # a non-trivial embedding LayerNorm, so a swapped weight/bias or a wrong eps shows
        model.embeddings.LayerNorm.weight.normal_(1.0, 0.2)
        model.embeddings.LayerNorm.bias.normal_(0.0, 0.2)
    model.save_pretrained(str(directory))
    _write_json(
        directory / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ],
    )
    _write_json(directory / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(
        directory / "1_Pooling" / "config.json",
        {"word_embedding_dimension": config.hidden_size, "pooling_mode": "mean"},
    )
    return directory


def write_cross_encoder(
    directory: Path,
    family: str,
    tokenizer: Tokenizer | None,
    num_labels: int = 1,
    seed: int = 0,
    vocab: list[str] | None = None,
) -> Path:
    """A random reranker: BertForSequenceClassification with the WordPiece `vocab` (tokenizer
    None), or XLMRobertaForSequenceClassification with `tokenizer`, as the folders
    sentence-transformers' CrossEncoder loads (like cross-encoder/ms-marco-MiniLM-L6-v2)."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if family == "bert":
        assert vocab is not None, "a BERT reranker needs its WordPiece vocab"
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        # transformers 5 takes the vocabulary as `vocab`; given `vocab_file` it kept only the 5 special tokens
        tokenizer_files = BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True)
        tokenizer_files.model_max_length = MAX_SEQ_LENGTH
        tokenizer_files.save_pretrained(str(directory))
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=64,
            initializer_range=INIT_RANGE,
            num_labels=num_labels,
        )
    else:
        assert tokenizer is not None
        config = _config(family, _save_tokenizer(directory, tokenizer, family), num_labels=num_labels)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(str(directory))
    return directory
