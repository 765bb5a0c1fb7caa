"""A random model of paraphrase-multilingual-MiniLM-L12-v2's shape: a 12-layer, 384-wide BertModel
with XLM-R's 250,037-piece Unigram vocabulary, in sentence-transformers' layout, and its bundle.
For measuring what a 250k vocabulary costs on the host (benchmarks.footprint --large-vocab); the
weights are random, so only sizes and times mean anything. Built once into a cache folder."""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_SIZE = 250_037
HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS, MAX_SEQ_LENGTH = 384, 12, 12, 1536, 512, 128
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def large_vocab_bundle(cache: Path) -> tuple[Path, Path]:
    """(model folder, bundle) in `cache`, built on first use."""
    model, bundle = cache / "model", cache / "bundle"
    if not (bundle / "bundle.json").is_file():
        _write_model(model)
        from compile import build_bundle

        build_bundle(str(model), bundle, calib_samples=100, force=True)
    return model, bundle


def _tokenizer():
    """A Unigram tokenizer of XLM-R's pipeline and size: pieces trained on STS-B, then filler pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from bertnpu_runtime.data import read_sentences, stsb_file

    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(
        read_sentences(stsb_file("stsb-en-train.csv")),
        trainers.UnigramTrainer(vocab_size=8000, special_tokens=SPECIALS, unk_token="<unk>"),
    )
    pieces = json.loads(trained.to_str())["model"]["vocab"]
    pieces += [[f"\u2581filler{i}", -20.0] for i in range(VOCAB_SIZE - len(pieces))]
    tokenizer = Tokenizer(models.Unigram([tuple(piece) for piece in pieces], unk_id=3))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tokenizer


def _write_model(folder: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    fast = XLMRobertaTokenizerFast(tokenizer_object=_tokenizer(), model_max_length=MAX_SEQ_LENGTH)
    fast.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        pad_token_id=1,
    )
    BertModel(config).eval().save_pretrained(str(folder))
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ],
        "sentence_bert_config.json": {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": HIDDEN, "pooling_mode": "mean"},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2), encoding="utf-8")
