"""NPU pipeline: does the host keep 1, 2 and 4 NPU cores busy? Measured with the qbruntime test double.

    python -m benchmarks.npu_pipeline [--bundle DIR] [--latency-us 100] [--cores 1 2 4] [--quick]

The test double (bertnpu_runtime.testing.FakeNpu) sleeps `latency_us` per sentence in every infer
call, on as many cores as asked, and returns zeros; no card is needed. For each core count,
SentenceEncoder(backend="npu").encode() runs over the STS-B dev sentences, and its throughput is
compared with the bound min(host rate, NPU rate): host rate = sentences/s of tokenize + embed +
pool alone (measured in this run), NPU rate = cores / latency.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    base_parser,
    interleave,
    print_table,
    run_metadata,
    start_run,
    summarize,
    write_json,
)
from .stages import summarize_stages, time_stages_once

BATCH_SIZE = 32


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0], "npu_pipeline")
    parser.add_argument("--latency-us", type=float, default=100.0, help="modelled NPU time per sentence per core (default: %(default)s)")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2, 4], help="NPU core counts to run (default: 1 2 4)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="encode() batch size (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure host rate and NPU-pipeline throughput per core count; print a table, write JSON."""
    from bertnpu_runtime import SentenceEncoder
    from bertnpu_runtime.testing import FakeNpu
    from bertnpu_runtime.testing.bundles import bundle_with_placeholder_mxq

    args = parse_args(argv)
    run = start_run(args)
    sentences, repeats = run.sentences, run.repeats
    latency = args.latency_us * 1e-6

    with tempfile.TemporaryDirectory(prefix="bertnpu-bench-") as scratch:
        npu_bundle = bundle_with_placeholder_mxq(run.bundle, Path(scratch) / "bundle")
        fakes, encoders = {}, {}
        hidden_size = _hidden_size(npu_bundle)
        try:
            for cores in args.cores:
                fake = FakeNpu(hidden_size=hidden_size, latency_s=latency, num_cores=8)
                encoders[cores] = SentenceEncoder(npu_bundle, backend="npu", npu_cores=cores, qbruntime_module=fake)
                fakes[cores] = fake
            # The host stages alone take turns with the encode() runs, so both see the same machine.
            host_runs: list[dict[str, float]] = []
            first = next(iter(encoders.values()))
            tasks = {"host": lambda _: host_runs.append(time_stages_once(first, sentences, args.batch_size, run_encoder=False))}
            tasks.update({cores: (lambda _, e=encoder: e.encode(sentences, batch_size=args.batch_size)) for cores, encoder in encoders.items()})
            seconds = interleave(tasks, repeats, warmup=1)
        finally:
            for encoder in encoders.values():
                encoder.close()

    host = summarize_stages(host_runs[1:], len(sentences), with_encoder=False)  # [0] was the warm-up
    host_rate = 1e6 / host["host"]["us_per_sentence_median"]
    del seconds["host"]
    rows = []
    for cores, values in seconds.items():
        achieved = len(sentences) / summarize(values)["median"]
        npu_rate = cores / latency
        bound = min(host_rate, npu_rate)
        calls = fakes[cores].calls
        busy = sum(call.end - call.start for call in calls) / (cores * (repeats + 1))  # per encode(), per core
        rows.append(
            {
                "npu_cores": cores,
                "sentences_per_s": achieved,
                "host_rate": host_rate,
                "npu_rate": npu_rate,
                "bound": bound,
                "limited_by": "host" if host_rate < npu_rate else "npu",
                "achieved_vs_bound": achieved / bound,
                "infer_calls_per_encode": len(calls) / (repeats + 1),
                "npu_busy_s_per_core": busy,
                "npu_modelled_s_per_core": len(sentences) * latency / cores,
            }
        )
    print_table(
        f"NPU pipeline (test double, {args.latency_us:g} us/sentence/core): {len(sentences)} STS-B sentences, "
        f"batch {args.batch_size}, {repeats} repeats; host stages {host['host']['us_per_sentence_median']:.1f} us/sentence",
        rows,
        ("npu_cores", "sentences_per_s", "host_rate", "npu_rate", "limited_by", "achieved_vs_bound", "infer_calls_per_encode"),
    )
    result = {
        "benchmark": "npu_pipeline",
        "meta": run_metadata(args),
        "latency_us_per_sentence": args.latency_us,
        "batch_size": args.batch_size,
        "sentences": len(sentences),
        "host_stages": host,
        "rows": rows,
    }
    write_json(args.out, result)
    return result


def _hidden_size(bundle: Path) -> int:
    from bertnpu_runtime.bundle import Bundle

    return Bundle(bundle, verify=False).manifest.hidden_size


if __name__ == "__main__":
    main()
