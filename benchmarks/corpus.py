"""Corpus: `embed_corpus` on a local Ray with 1 and 2 actors against one in-process encode() of the
same sentences, and what Ray adds per batch.

    python -m benchmarks.corpus [--bundle DIR] [--threads 2] [--quick]

Every run embeds the STS-B dev sentences (3,000) into fresh Parquet shards; the contenders take
turns, `--repeats` rounds, medians reported. The actors share this machine's cores (one ONNX thread
each), so this measures the overhead of the Ray path on one host, not a scale-out: a real figure
needs several NPU hosts, each actor on a card of its own.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import base_parser, print_table, run_metadata, start_run, write_json

BATCH_ROWS = 1024  # embed_corpus's map_batches batch


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0], "corpus")
    args = parser.parse_args(argv)
    run = start_run(args)
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from bertnpu_runtime import SentenceEncoder
    from bertnpu_runtime.corpus import embed_corpus

    sentences = run.sentences
    seconds: dict[str, list[float]] = {"in_process": [], "ray_1_actor": [], "ray_2_actors": []}
    ray.init(num_cpus=args.threads, include_dashboard=False, logging_level="ERROR")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bertnpu-corpus-") as scratch,
            SentenceEncoder(run.bundle, backend="onnx", num_threads=args.threads) as encoder,
        ):
            corpus = Path(scratch) / "corpus.parquet"
            pq.write_table(pa.table({"id": list(range(len(sentences))), "text": sentences}), corpus)
            for round_no in range(run.repeats + 1):  # round 0 warms up
                for name in seconds:
                    started = time.perf_counter()
                    if name == "in_process":
                        encoder.encode(sentences)
                    else:
                        actors = 1 if name == "ray_1_actor" else 2
                        embed_corpus(
                            run.bundle, corpus, Path(scratch) / f"{name}-{round_no}", actors=actors, shard_rows=1000
                        )
                    if round_no:
                        seconds[name].append(time.perf_counter() - started)
    finally:
        ray.shutdown()
    batches = -(-len(sentences) // BATCH_ROWS)
    in_process = statistics.median(seconds["in_process"])
    rows = [
        {
            "contender": name,
            "sentences_per_s": len(sentences) / statistics.median(times),
            "vs_in_process": in_process / statistics.median(times),
            "ray_overhead_ms_per_batch": None
            if name == "in_process"
            else 1e3 * (statistics.median(times) - in_process) / batches,
        }
        for name, times in seconds.items()
    ]
    print_table(
        f"Corpus embedding: {len(sentences)} STS-B sentences, local Ray on {args.threads} CPUs, medians of {run.repeats} rounds "
        "(one host: not a scale-out figure)",
        rows,
        ("contender", "sentences_per_s", "vs_in_process", "ray_overhead_ms_per_batch"),
    )
    result = {"benchmark": "corpus", "meta": run_metadata(args), "rows": rows, "seconds": seconds}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
