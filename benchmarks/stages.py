"""Time bertnpu's pipeline stage by stage: tokenize, host embedding + LayerNorm, encoder, pool (+ normalize).

The stages run one after another here, on the batches encode() forms (its chunks, its order), but
without encode()'s overlap of host and encoder work, so each stage's cost is seen alone. The host
stages (tokenize, embed, pool) are what an NPU deployment pays on its CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .common import summarize

STAGES = ("tokenize", "embed", "encoder", "pool")
HOST_STAGES = ("tokenize", "embed", "pool")


def time_stages_once(encoder, texts: list[str], batch_size: int, run_encoder: bool = True) -> dict[str, float]:
    """Seconds spent in each stage encoding `texts` once with a SentenceEncoder.

    With run_encoder=False the encoder stage is skipped and pooling runs on the embedding output
    (same shape, same cost), which times the host stages alone.
    """
    spent = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    pipeline = encoder.pipeline
    batches = pipeline.token_batches(texts, batch_size, truncated=[])  # tokenizes a chunk when it needs one
    while True:
        start = clock()
        item = next(batches, None)
        after_tokenize = clock()
        spent["tokenize"] += after_tokenize - start
        if item is None:
            return spent
        tokens = item.tokens
        hidden = pipeline.embed(tokens)  # [batch, seq, hidden]
        after_embed = clock()
        output = pipeline.backend.run(hidden, tokens.attention_mask) if run_encoder else hidden
        after_encoder = clock()
        pipeline.pool(output, tokens.attention_mask)  # [batch, hidden], normalized where the model is
        end = clock()
        spent["embed"] += after_embed - after_tokenize
        spent["encoder"] += after_encoder - after_embed
        spent["pool"] += end - after_encoder


def stage_breakdown(
    encoder, texts: Sequence[str], batch_size: int, repeats: int, warmup: int = 1, run_encoder: bool = True
) -> dict[str, dict[str, float]]:
    """Per stage (and host total, and all), microseconds per sentence: median and p95 over repeats."""
    texts = list(texts)
    for _ in range(warmup):
        time_stages_once(encoder, texts, batch_size, run_encoder)
    runs = [time_stages_once(encoder, texts, batch_size, run_encoder) for _ in range(repeats)]
    return summarize_stages(runs, len(texts), run_encoder)


def summarize_stages(
    runs: Sequence[dict[str, float]], sentences: int, with_encoder: bool = True
) -> dict[str, dict[str, float]]:
    """Per stage, host (tokenize + embed + pool) and total: microseconds per sentence, median and p95 over `runs`."""
    names = (
        [name for name in STAGES if with_encoder or name != "encoder"] + ["host"] + (["total"] if with_encoder else [])
    )
    per_sentence = 1e6 / sentences
    result = {}
    for name in names:
        if name == "host":
            values = [sum(run[stage] for stage in HOST_STAGES) for run in runs]
        elif name == "total":
            values = [sum(run[stage] for stage in STAGES) for run in runs]
        else:
            values = [run[name] for run in runs]
        summary = summarize(values)
        result[name] = {
            "us_per_sentence_median": summary["median"] * per_sentence,
            "us_per_sentence_p95": summary["p95"] * per_sentence,
        }
    return result
