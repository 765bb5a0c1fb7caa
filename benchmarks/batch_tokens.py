"""ONNX batches of at most BATCH_TOKENS padded tokens against batches of batch_size texts alone,
on texts of several lengths.

    python -m benchmarks.batch_tokens [--bundle DIR] [--threads 2] [--chars 250 500 1500] [--repeats 3]

For each length, 256 texts of STS-B dev sentences joined to about that many characters are encoded
by encode(batch_size=32) twice in every round, taking turns (`interleave`): once with the ONNX
backend's limit on a batch's padded tokens, once without it. Reported: texts/s, medians.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from .common import base_parser, interleave, print_table, run_metadata, start_run, write_json
from .serve import long_texts

TEXTS = 256


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0], "batch_tokens")
    parser.add_argument("--chars", type=int, nargs="+", default=[250, 500, 1500], help="text lengths in characters")
    args = parser.parse_args(argv)
    run = start_run(args, quick_repeats=1)

    from bertnpu_runtime import SentenceEncoder

    limited = SentenceEncoder(run.bundle, backend="onnx", num_threads=args.threads)
    unlimited = SentenceEncoder(run.bundle, backend="onnx", num_threads=args.threads)
    backend = unlimited.pipeline.backend
    limit = backend.hints.batch_tokens
    backend.hints = dataclasses.replace(backend.hints, batch_tokens=None)
    rows = []
    try:
        for chars in args.chars:
            texts = long_texts(run.sentences, TEXTS, chars)
            tokens = int(limited.tokenize(texts).lengths.mean())
            seconds = interleave(
                {
                    "limited": lambda _, texts=texts: limited.encode(texts, batch_size=32),
                    "unlimited": lambda _, texts=texts: unlimited.encode(texts, batch_size=32),
                },
                run.repeats,
            )
            rate = {name: TEXTS / statistics.median(values) for name, values in seconds.items()}
            rows.append(
                {
                    "chars": chars,
                    "mean_tokens": tokens,
                    f"texts_per_s_batch_tokens_{limit}": rate["limited"],
                    "texts_per_s_32_texts": rate["unlimited"],
                    "ratio": rate["limited"] / rate["unlimited"],
                }
            )
    finally:
        limited.close()
        unlimited.close()
    print_table(
        f"encode() of {TEXTS} texts, batch_size 32, with and without the ONNX limit of {limit} padded tokens a batch, "
        f"medians of {run.repeats} rounds",
        rows,
        list(rows[0]),
    )
    result = {"benchmark": "batch_tokens", "meta": run_metadata(args), "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
