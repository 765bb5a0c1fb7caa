"""Rerank: bertnpu's CrossEncoder against sentence-transformers' CrossEncoder, same process, same threads.

    python -m benchmarks.rerank [--bundle DIR --model FOLDER] [--threads 2] [--repeats 5] [--quick]

Without --bundle, a reranker of cross-encoder/ms-marco-MiniLM-L6-v2's shape is made from the
embedded all-MiniLM-L6-v2 (its encoder weights, a random one-label head: speed does not depend on
the head's values) and compiled once into a cache folder. Measured, taking turns: pairs per second
over STS-B dev pairs (batch 32), and the latency of one query against 20 and 100 documents (one
rank() call each), with the scores' largest difference from sentence-transformers.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    BASELINE,
    ONNX,
    ONNX_INT8,
    QUICK_PAIRS,
    RESULTS_DIR,
    interleave,
    load_stsb_dev,
    pin_threads,
    print_table,
    run_metadata,
    summarize,
    write_json,
)

CACHE = Path("/tmp/bertnpu-bench-reranker")
DOCUMENT_COUNTS = (20, 100)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rerank", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="a reranker bundle (default: built, see above)")
    parser.add_argument("--model", type=Path, default=None, help="its source folder, for sentence-transformers")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every contender (default: 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 5; --quick: 2)")
    parser.add_argument("--limit", type=int, default=None, help="STS-B dev pairs for the rate (default: 1,500)")
    parser.add_argument("--quick", action="store_true", help="a few pairs and repeats: checks that it runs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "rerank.json", help="JSON result file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure the contenders taking turns; print tables, write JSON, return it."""
    args = parse_args(argv)
    pin_threads(args.threads)
    if (args.bundle is None) != (args.model is None):
        raise SystemExit("give --bundle and --model together, or neither (a MiniLM-shaped reranker is built)")
    model, bundle = (args.model, args.bundle) if args.bundle else minilm_reranker(CACHE)
    repeats = args.repeats or (2 if args.quick else 5)
    pairs = [(a, b) for a, b, _ in load_stsb_dev(None)[: args.limit or (QUICK_PAIRS if args.quick else None)]]
    documents = [b for _, b in pairs] * (1 + max(DOCUMENT_COUNTS) // max(1, len(pairs)))
    query = pairs[0][0]

    contenders = _contenders(model, bundle, args.threads)
    reference = contenders[BASELINE](pairs)
    rate_rows, latency_rows = [], []
    seconds = interleave({name: (lambda _, p=predict: p(pairs)) for name, predict in contenders.items()}, repeats)
    for name, predict in contenders.items():
        stats = summarize(seconds[name])
        rate_rows.append(
            {
                "contender": name,
                "pairs": len(pairs),
                "pairs_per_s": len(pairs) / stats["median"],
                "max_score_difference": float(np.abs(predict(pairs) - reference).max()),
            }
        )
    baseline_rate = rate_rows[0]["pairs_per_s"]
    for row in rate_rows:
        row["vs_baseline"] = row["pairs_per_s"] / baseline_rate
    for count in DOCUMENT_COUNTS:
        batch = [(query, document) for document in documents[:count]]
        timed = interleave(
            {name: (lambda _, p=predict, b=batch: p(b)) for name, predict in contenders.items()}, repeats * 4
        )
        base = summarize(timed[BASELINE])["median"]
        for name in contenders:
            stats = summarize(timed[name])
            latency_rows.append(
                {
                    "contender": name,
                    "documents": count,
                    "p50_ms": stats["median"] * 1000,
                    "p95_ms": stats["p95"] * 1000,
                    "p50_vs_baseline": stats["median"] / base,
                }
            )
    print_table(f"STS-B dev pairs, batch 32 (medians of {repeats})", rate_rows, list(rate_rows[0]))
    print_table("One query against N documents", latency_rows, list(latency_rows[0]))
    result = {
        "benchmark": "rerank",
        "meta": run_metadata(args),
        "model": str(model),
        "rate": rate_rows,
        "latency": latency_rows,
    }
    write_json(args.out, result)
    return result


def _contenders(model: Path, bundle: Path, threads: int) -> dict[str, Callable[[list[tuple[str, str]]], np.ndarray]]:
    """name -> predict(pairs), sentence-transformers first; int8 where the bundle has it."""
    import torch
    from sentence_transformers import CrossEncoder as TorchCrossEncoder

    from bertnpu_runtime import CrossEncoder
    from bertnpu_runtime.bundle import INT8_ENCODER_FILE, Bundle

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_model = TorchCrossEncoder(str(model), device="cpu")
    found: dict[str, Callable[[list[tuple[str, str]]], np.ndarray]] = {
        BASELINE: lambda pairs: torch_model.predict(pairs, batch_size=32, show_progress_bar=False)
    }
    ours = CrossEncoder(bundle, backend="onnx", num_threads=threads)
    found[ONNX] = lambda pairs: ours.predict(pairs, batch_size=32)
    if Bundle(bundle, verify=False).has(INT8_ENCODER_FILE):
        int8 = CrossEncoder(bundle, backend="onnx", encoder_precision="int8", num_threads=threads)
        found[ONNX_INT8] = lambda pairs: int8.predict(pairs, batch_size=32)
    return found


def minilm_reranker(cache: Path) -> tuple[Path, Path]:
    """(model folder, bundle with the int8 preview): all-MiniLM-L6-v2's weights under a random
    one-label head, ms-marco-MiniLM-L6-v2's architecture; built on first use."""
    model, bundle = cache / "model", cache / "bundle"
    if not (bundle / "bundle.json").is_file():
        import torch
        from transformers import AutoTokenizer, BertForSequenceClassification

        from compile import build_bundle
        from compile.source_model import resolve_model_folder

        source = resolve_model_folder("default")
        torch.manual_seed(0)
        reranker = BertForSequenceClassification.from_pretrained(str(source), num_labels=1).eval()
        reranker.save_pretrained(str(model))
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        tokenizer.model_max_length = 512
        tokenizer.save_pretrained(str(model))
        build_bundle(str(model), bundle, int8=True, force=True)
    return model, bundle


if __name__ == "__main__":
    main()
