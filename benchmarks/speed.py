"""Speed: sentence-transformers/PyTorch (baseline) against bertnpu's backends, same process, same threads.

    python -m benchmarks.speed [--bundle DIR] [--threads 2] [--quick] [--out FILE.json]

Workloads: the 3,000 STS-B dev sentences at batch 32; single-sentence latency; batch sizes 1, 8,
32, 128; latency against input length up to the 256-token limit (batch 1 and batch 32, also drawn
as a PNG next to the JSON); bertnpu's stage breakdown in microseconds per sentence.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    BASELINE,
    ONNX,
    Contenders,
    base_parser,
    build_contenders,
    interleave,
    interleave_blocks,
    print_table,
    ratio,
    reference_model_folder,
    run_metadata,
    start_run,
    summarize,
    write_json,
)
from .stages import summarize_stages, time_stages_once

# The host stages timed with no encoder run between them (pooling reads the embedding output).
HOST_ONLY = "host stages alone"

STSB_BATCH_SIZE = 32
BATCH_SIZES = (1, 8, 32, 128)
LENGTHS = (16, 32, 64, 128, 256)
LENGTH_BATCH_SIZE = 32


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0], "speed")
    parser.add_argument("--no-plot", action="store_true", help="skip the latency-against-length PNG")
    parser.add_argument(
        "--families",
        action="store_true",
        help="also STS-B dev speed per model family (random models of all-MiniLM-L6-v2's shape, "
        "built once into /tmp/bertnpu-bench-families), against sentence-transformers",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every speed workload, print tables, write JSON (+ PNG); return the result."""
    args = parse_args(argv)
    run = start_run(args)
    sentences, repeats = run.sentences, run.repeats
    contenders = build_contenders(run.bundle, reference_model_folder(run.bundle, args.model), args.threads)
    try:
        result: dict[str, Any] = {
            "benchmark": "speed",
            "meta": run_metadata(args),
            "baseline": BASELINE,
            "contenders": [c.name for c in contenders],
            "skipped": contenders.skipped,
        }
        result["stsb_dev"] = stsb_dev(contenders, sentences, repeats)
        result["single_sentence"] = single_sentence(contenders, sentences, 5 if args.quick else 200)
        result["batch_sizes"] = batch_sizes(contenders, sentences, 0 if args.quick else 768)
        if args.quick:
            result["length_sweep"] = length_sweep(contenders, sentences, (16, 256), 1, batch_size=4)
        else:
            result["length_sweep"] = length_sweep(contenders, sentences, LENGTHS, repeats)
        result["stages"] = stages(contenders, sentences, repeats)
    finally:
        contenders.close()
    if args.families:
        result["families"] = family_speed(sentences, repeats, args.threads)
    write_json(args.out, result)
    if not args.no_plot:
        plot_length_sweep(result["length_sweep"], args.out.with_suffix(".png"))
    return result


def stsb_dev(contenders: Contenders, sentences: list[str], repeats: int) -> list[dict[str, Any]]:
    """Throughput on all STS-B dev sentences at batch 32."""
    tasks = {c.name: (lambda _, c=c: c.encode(sentences, STSB_BATCH_SIZE)) for c in contenders}
    rows = _throughput_rows(interleave(tasks, repeats), len(sentences), {"batch_size": STSB_BATCH_SIZE})
    print_table(
        f"STS-B dev: {len(sentences)} sentences, batch {STSB_BATCH_SIZE}, {repeats} repeats",
        rows,
        ("contender", "sentences_per_s", "vs_baseline", "median_s", "p95_s"),
    )
    return rows


# all-MiniLM-L6-v2's sizes, for the per-family models (random weights: speed does not depend on them).
MINILM_SHAPE = {
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "initializer_range": 0.02,  # BERT's own: large random weights overflow the export check's tolerance at this width
}
FAMILY_TOKENIZERS = {"bert-unigram": "unigram", "roberta": "bpe", "xlm-roberta": "unigram", "mpnet": "mpnet-wordpiece"}


def family_speed(sentences: list[str], repeats: int, threads: int) -> list[dict[str, Any]]:
    """STS-B dev throughput at batch 32 of each family's model, bertnpu ONNX against
    sentence-transformers, each family's pair taking turns."""
    from bertnpu_runtime.testing.families import train_tokenizer, write_embedding_model
    from compile import build_bundle

    cache = Path("/tmp/bertnpu-bench-families")
    rows: list[dict[str, Any]] = []
    for family, kind in FAMILY_TOKENIZERS.items():
        folder, bundle = cache / family, cache / f"{family}-bundle"
        if not (bundle / "bundle.json").is_file():
            write_embedding_model(folder, family, train_tokenizer(kind), shape=MINILM_SHAPE, max_seq_length=256)
            build_bundle(str(folder), bundle, force=True)
        contenders = build_contenders(bundle, folder, threads)
        try:
            pair = Contenders([c for c in contenders if c.name in (BASELINE, ONNX)])
            family_rows = stsb_dev(pair, sentences, repeats)
        finally:
            contenders.close()
        rows.extend({"family": family, **row} for row in family_rows)
    print_table(
        "STS-B dev per family (all-MiniLM-L6-v2's shape), batch 32",
        rows,
        ("family", "contender", "sentences_per_s", "vs_baseline"),
    )
    return rows


def single_sentence(contenders: Contenders, sentences: list[str], count: int) -> list[dict[str, Any]]:
    """Latency of encode(one str), over `count` different STS-B sentences."""
    picked = sentences[:count]
    tasks = {c.name: (lambda i, c=c: c.encode(picked[i % len(picked)], 1)) for c in contenders}
    seconds = interleave_blocks(tasks, len(picked))
    rows = _latency_rows(seconds, {"sentences": len(picked)})
    print_table(
        f"Single-sentence latency: {len(picked)} STS-B sentences, one encode() call each",
        rows,
        ("contender", "p50_ms", "p95_ms", "p50_vs_baseline"),
    )
    return rows


def batch_sizes(contenders: Contenders, sentences: list[str], sentence_budget: int) -> list[dict[str, Any]]:
    """Per-batch latency and throughput at batch sizes 1, 8, 32, 128: each call encodes a different
    batch, about `sentence_budget` sentences per contender and size (at least 2 calls)."""
    rows = []
    for size in BATCH_SIZES:
        batches = [sentences[i : i + size] for i in range(0, len(sentences) - size + 1, size)] or [sentences[:size]]
        calls = max(2, min(len(batches), sentence_budget // size))
        tasks = {c.name: (lambda i, c=c, b=batches, n=size: c.encode(b[i % len(b)], n)) for c in contenders}
        seconds = interleave_blocks(tasks, max(1, calls // 2))
        extra = {"batch_size": size, "sentences_per_batch": len(batches[0])}
        for row in _latency_rows(seconds, extra):
            row["sentences_per_s"] = row["sentences_per_batch"] / (row["p50_ms"] / 1e3)
            rows.append(row)
    _add_ratios(rows, "sentences_per_s", "vs_baseline", group="batch_size")
    print_table(
        "Batch sizes: latency per encode() call, throughput from the median",
        rows,
        ("batch_size", "contender", "p50_ms", "p95_ms", "sentences_per_s", "vs_baseline"),
    )
    return rows


def length_sweep(
    contenders: Contenders,
    sentences: list[str],
    lengths: Sequence[int],
    repeats: int,
    batch_size: int = LENGTH_BATCH_SIZE,
) -> list[dict[str, Any]]:
    """Latency at batch 1 and time per sentence at `batch_size` for inputs of a given token length."""
    tokenizer = next(c.encoder for c in contenders if c.encoder is not None)
    words = " ".join(sentences * 8).split()  # enough words for many 256-token texts from a short --limit
    lengths = [n for n in lengths if n <= tokenizer.max_seq_length]
    rows = []
    for tokens in lengths:
        texts = texts_of_length(tokenizer, words, tokens, batch_size)
        measured = int(tokenizer.tokenize(texts).lengths.max())
        singles = interleave_blocks(
            {c.name: (lambda i, c=c, t=texts: c.encode(t[i % len(t)], 1)) for c in contenders}, repeats * 2
        )
        batched = interleave({c.name: (lambda _, c=c, t=texts: c.encode(t, batch_size)) for c in contenders}, repeats)
        for contender in contenders:
            single, batch = summarize(singles[contender.name]), summarize(batched[contender.name])
            rows.append(
                {
                    "tokens": measured,
                    "contender": contender.name,
                    "batch1_p50_ms": single["median"] * 1e3,
                    "batch1_p95_ms": single["p95"] * 1e3,
                    "batch_size": batch_size,
                    "batched_ms_per_sentence": batch["median"] * 1e3 / len(texts),
                    "batched_sentences_per_s": len(texts) / batch["median"],
                }
            )
    _add_ratios(rows, "batch1_p50_ms", "batch1_vs_baseline", group="tokens")
    _add_ratios(rows, "batched_sentences_per_s", "batched_vs_baseline", group="tokens")
    print_table(
        f"Input length (tokens incl. [CLS]/[SEP]), batch 1 and batch {batch_size}; the last rows are the long-input workload",
        rows,
        (
            "tokens",
            "contender",
            "batch1_p50_ms",
            "batch1_vs_baseline",
            "batched_sentences_per_s",
            "batched_vs_baseline",
        ),
    )
    return rows


def texts_of_length(tokenizer: Any, words: Sequence[str], tokens: int, count: int) -> list[str]:
    """`count` different texts of at most `tokens` tokens (with [CLS]/[SEP]), each as long as whole words allow.

    Texts are runs of `words` starting at different offsets; `tokenizer` is a SentenceEncoder,
    whose tokenize() truncates, so a truncated text counts as too long.
    """

    def fits(text: str) -> bool:
        batch = tokenizer.tokenize([text])
        return not batch.truncated[0] and batch.lengths[0] <= tokens

    texts = []
    for start in np.linspace(0, len(words) // 2, count, dtype=int):
        low, high = 1, min(len(words) - start, tokens)  # a word is at least one token
        while low < high:  # the most words that still fit in `tokens`
            middle = (low + high + 1) // 2
            if fits(" ".join(words[start : start + middle])):
                low = middle
            else:
                high = middle - 1
        texts.append(" ".join(words[start : start + low]))
    return texts


def stages(contenders: Contenders, sentences: list[str], repeats: int) -> dict[str, Any]:
    """bertnpu's stage breakdown on the STS-B dev sentences, per bertnpu contender, and the host stages
    alone (no encoder run in between, as on an NPU host: ONNX Runtime's threads do not compete).
    The contenders take turns, round by round, so a slow phase of the machine hits them alike."""
    bertnpu = [contender for contender in contenders if contender.encoder is not None]
    runs = {contender.name: (contender.encoder, True) for contender in bertnpu}
    if bertnpu:
        runs[HOST_ONLY] = (bertnpu[0].encoder, False)
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    tasks = {
        name: (
            lambda _, name=name, encoder=encoder, run_encoder=run_encoder: timings[name].append(
                time_stages_once(encoder, sentences, STSB_BATCH_SIZE, run_encoder)
            )
        )
        for name, (encoder, run_encoder) in runs.items()
    }
    interleave(tasks, repeats, warmup=1)
    result = {}
    for name, (_, run_encoder) in runs.items():
        breakdown = summarize_stages(timings[name][1:], len(sentences), run_encoder)  # [0] was the warm-up
        result[name] = breakdown
        rows = [{"stage": stage, **values} for stage, values in breakdown.items()]
        print_table(
            f"{name} stages: us per STS-B sentence, batch {STSB_BATCH_SIZE}, stages run one after another "
            "(host = tokenize + embed + pool)",
            rows,
            ("stage", "us_per_sentence_median", "us_per_sentence_p95"),
        )
    return result


def plot_length_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    """Latency at batch 1 and time per sentence in a batch against input length, one line per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(row["contender"] for row in rows):
        mine = [row for row in rows if row["contender"] == name]
        tokens = [row["tokens"] for row in mine]
        left.plot(tokens, [row["batch1_p50_ms"] for row in mine], marker="o", label=name)
        right.plot(tokens, [row["batched_ms_per_sentence"] for row in mine], marker="o", label=name)
    batch = rows[0]["batch_size"] if rows else LENGTH_BATCH_SIZE
    for axis, title in ((left, "batch 1: median latency"), (right, f"batch {batch}: time per sentence")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens per sentence")
        axis.set_ylabel("ms")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"wrote {path}")


def _throughput_rows(seconds: dict[str, list[float]], sentences: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, values in seconds.items():
        summary = summarize(values)
        rows.append(
            {
                "contender": name,
                "sentences": sentences,
                **extra,
                "median_s": summary["median"],
                "p95_s": summary["p95"],
                "sentences_per_s": sentences / summary["median"],
                "repeats": summary["n"],
            }
        )
    _add_ratios(rows, "sentences_per_s", "vs_baseline")
    return rows


def _latency_rows(seconds: dict[str, list[float]], extra: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, values in seconds.items():
        summary = summarize(values)
        rows.append(
            {
                "contender": name,
                **extra,
                "p50_ms": summary["median"] * 1e3,
                "p95_ms": summary["p95"] * 1e3,
                "calls": summary["n"],
            }
        )
    _add_ratios(rows, "p50_ms", "p50_vs_baseline")
    return rows


def _add_ratios(rows: list[dict[str, Any]], key: str, ratio_key: str, group: str | None = None) -> None:
    """rows[ratio_key] = rows[key] / the baseline's rows[key] in the same group (None without a baseline)."""
    baselines = {row.get(group): row[key] for row in rows if row["contender"] == BASELINE}
    for row in rows:
        row[ratio_key] = ratio(row[key], baselines.get(row.get(group)))


if __name__ == "__main__":
    main()
