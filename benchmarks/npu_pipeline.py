"""NPU pipeline: does the host keep 1, 2 and 4 NPU cores busy? Measured with the qbruntime test double.

    python -m benchmarks.npu_pipeline [--bundle DIR] [--latency-us 100 [150 ...]] [--cores 1 2 4] [--copies K] [--quick]

The test double (bertnpu_runtime.testing.FakeNpu) makes every infer call last the modelled latency
per sentence, on as many cores as asked, and returns zeros; no card is needed. For each latency and
core count, SentenceEncoder(backend="npu").encode() runs over the STS-B dev sentences, and its
throughput is compared with the bound min(host rate, NPU rate): host rate = sentences/s of
tokenize + embed + pool alone (measured in this run), NPU rate = cores / latency. Every latency and
core count takes its turn in each round. `--copies K` hands each encode() the sentences K times
over in one list: every call pays for filling and draining the pipeline, and a longer call spreads
that over more sentences. It also reports the CPU time encode() takes per sentence:
on its own thread (the host's share of an NPU deployment, with submitting and collecting) and on
the threads that drive the cores.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
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
LOSSES = ("before_first_call_ms", "in_calls_beyond_model_ms", "between_calls_ms", "after_last_call_ms")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0], "npu_pipeline")
    parser.add_argument(
        "--latency-us", type=float, nargs="+", default=[100.0],
        help="modelled NPU time per sentence per core; several values take turns (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2, 4], help="NPU core counts to run (default: 1 2 4)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="encode() batch size (default: %(default)s)")
    parser.add_argument(
        "--copies", type=int, default=1,
        help="each encode() gets the STS-B dev sentences this many times over, in one list (default: %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.copies < 1:
        parser.error(f"--copies must be at least 1, found {args.copies}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure host rate and NPU-pipeline throughput per latency and core count; print tables, write JSON."""
    from bertnpu_runtime.testing.bundles import bundle_with_placeholder_mxq

    args = parse_args(argv)
    run = start_run(args)
    sentences, repeats = run.sentences * args.copies, run.repeats
    runs = [(latency_us, cores) for latency_us in args.latency_us for cores in args.cores]

    with tempfile.TemporaryDirectory(prefix="bertnpu-bench-") as scratch:
        npu_bundle = bundle_with_placeholder_mxq(run.bundle, Path(scratch) / "bundle")
        fakes, encoders, core_ids, ceiling_encoders, ceiling_fakes = {}, {}, {}, {}, {}
        hidden_size = _hidden_size(npu_bundle)
        try:
            for cores in args.cores:  # one encoder per core count serves every latency (see _at_latency)
                encoders[cores], fakes[cores] = _npu_encoder(npu_bundle, cores, hidden_size)
                ceiling_encoders[cores], ceiling_fakes[cores] = _npu_encoder(npu_bundle, cores, hidden_size)
                core_ids[cores] = encoders[cores]._encoder.cores  # (cluster, core) pairs
            # The host stages alone take turns with the encode() runs, so both see the same machine.
            host_runs: list[dict[str, float]] = []
            first = next(iter(encoders.values()))
            tasks = {"host": lambda _: host_runs.append(time_stages_once(first, sentences, args.batch_size, run_encoder=False))}
            windows: dict[tuple[float, int], list[tuple[float, float]]] = {key: [] for key in runs}  # (start, end) of each encode()
            # per encode(): CPU seconds on this thread and on the core threads, this thread's page faults
            cpu: dict[tuple[float, int], list[tuple[float, float, int]]] = {key: [] for key in runs}
            # The ceiling: encode()'s batches, embedded beforehand, all submitted at once, so the host
            # does nothing while the cores run. What is lost there is the double's and the machine's.
            prepared = list(first._host_batches(sentences, args.batch_size, truncated=[]))
            for key in runs:
                latency, cores = key[0] * 1e-6, key[1]
                timed = partial(_timed_encode, encoders[cores], sentences, args.batch_size, windows[key], cpu[key])
                tasks[key] = _at_latency(fakes[cores], latency, timed)
                tasks[(*key, "prepared")] = _at_latency(ceiling_fakes[cores], latency, partial(_run_prepared, ceiling_encoders[cores], prepared))
            seconds = interleave(tasks, repeats, warmup=1)
        finally:
            for encoder in [*encoders.values(), *ceiling_encoders.values()]:
                encoder.close()

    host = summarize_stages(host_runs[1:], len(sentences), with_encoder=False)  # [0] was the warm-up
    host_rate = 1e6 / host["host"]["us_per_sentence_median"]
    rows = []
    for latency_us, cores in runs:
        key, latency = (latency_us, cores), latency_us * 1e-6
        achieved = len(sentences) / summarize(seconds[key])["median"]
        ceiling = len(sentences) / summarize(seconds[(*key, "prepared")])["median"]
        npu_rate = cores / latency
        bound = min(host_rate, npu_rate)
        calls = _calls_within(fakes[cores].calls, windows[key])  # this latency's encode()s, the warm-up too
        host_cpu, threads_cpu, faults = (statistics.median(column) for column in zip(*cpu[key][1:]))  # [0]: warm-up
        busy = sum(call.end - call.start for call in calls) / (cores * (repeats + 1))  # per encode(), per core
        rows.append(
            {
                "latency_us": latency_us,
                "npu_cores": cores,
                "sentences_per_s": achieved,
                "host_rate": host_rate,
                "npu_rate": npu_rate,
                "bound": bound,
                "limited_by": "host" if host_rate < npu_rate else "npu",
                "achieved_vs_bound": achieved / bound,
                "prepared_sentences_per_s": ceiling,
                "prepared_vs_bound": ceiling / bound,
                "infer_calls_per_encode": len(calls) / (repeats + 1),
                "npu_busy_s_per_core": busy,
                "npu_modelled_s_per_core": len(sentences) * latency / cores,
                "wall_ms_per_encode": 1e3 * sum(end - start for start, end in windows[key][1:]) / repeats,
                "host_cpu_us_per_sentence": 1e6 * host_cpu / len(sentences),
                "core_threads_cpu_us_per_sentence": 1e6 * threads_cpu / len(sentences),
                "host_page_faults_per_encode": faults,
                **_time_lost(calls, windows[key][1:], core_ids[cores], latency),
            }
        )
    copies = f" ({args.copies} copies of {len(run.sentences)})" if args.copies > 1 else ""
    print_table(
        f"NPU pipeline (test double; latency = modelled us per sentence per core): {len(sentences)} STS-B sentences"
        f"{copies} per encode(), "
        f"batch {args.batch_size}, {repeats} repeats; host stages {host['host']['us_per_sentence_median']:.1f} us/sentence",
        rows,
        ("latency_us", "npu_cores", "sentences_per_s", "host_rate", "npu_rate", "limited_by", "achieved_vs_bound", "prepared_vs_bound", "infer_calls_per_encode"),
    )
    print_table(
        "Time beyond the modelled NPU time: ms per encode(), mean over the cores (wall = modelled + these)",
        rows,
        ("latency_us", "npu_cores", "wall_ms_per_encode", *LOSSES),
    )
    print_table(
        "Inside encode(): CPU time per sentence on the calling thread and on the core threads, "
        "and the calling thread's page faults (medians over the repeats)",
        rows,
        ("latency_us", "npu_cores", "host_cpu_us_per_sentence", "core_threads_cpu_us_per_sentence", "host_page_faults_per_encode"),
    )
    result = {
        "benchmark": "npu_pipeline",
        "meta": run_metadata(args),
        "latencies_us_per_sentence": args.latency_us,
        "batch_size": args.batch_size,
        "sentences": len(sentences),
        "copies": args.copies,
        "host_stages": host,
        "rows": rows,
    }
    write_json(args.out, result)
    return result


def _npu_encoder(bundle: Path, cores: int, hidden_size: int) -> tuple[Any, Any]:
    """A SentenceEncoder on `cores` cores of a fresh test double, and the double (its latency_s is set per run)."""
    from bertnpu_runtime import SentenceEncoder
    from bertnpu_runtime.testing import FakeNpu

    fake = FakeNpu(hidden_size=hidden_size, num_cores=8)
    return SentenceEncoder(bundle, backend="npu", npu_cores=cores, qbruntime_module=fake), fake


def _at_latency(fake: Any, latency: float, run: Callable[[], object]) -> Callable[[int], None]:
    """A benchmark task: set the double's modelled latency (seconds per sentence), then run."""

    def task(_: int) -> None:
        fake.latency_s = latency
        run()

    return task


def _run_prepared(encoder: Any, batches: Sequence[tuple[Any, Any, Any]]) -> None:
    """Submit embedded (rows, hidden, mask) batches to the encoder's NPU backend at once; wait for all,
    the last first, so that the host thread sleeps until the cores are nearly done."""
    pending = [encoder._encoder.submit(hidden, mask) for _, hidden, mask in batches]
    for batch in reversed(pending):
        batch.result()


def _timed_encode(
    encoder: Any,
    sentences: list[str],
    batch_size: int,
    windows: list[tuple[float, float]],
    cpu: list[tuple[float, float, int]],
) -> None:
    """encode() once; appends its (start, end) to `windows`, and to `cpu` its CPU seconds (this thread,
    the core threads) and this thread's minor page faults."""
    core_clocks = [time.pthread_getcpuclockid(worker.ident) for worker in encoder._encoder._workers]
    host_before, cores_before = time.thread_time(), sum(map(time.clock_gettime, core_clocks))
    faults_before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    start = time.perf_counter()
    encoder.encode(sentences, batch_size=batch_size)
    windows.append((start, time.perf_counter()))
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults_before
    cpu.append((time.thread_time() - host_before, sum(map(time.clock_gettime, core_clocks)) - cores_before, faults))


def _calls_within(calls: Sequence[Any], windows: Sequence[tuple[float, float]]) -> list[Any]:
    """The infer calls that started inside one of the (start, end) windows."""
    return [call for call in calls if any(start <= call.start <= end for start, end in windows)]


def _time_lost(calls: Sequence[Any], windows: Sequence[tuple[float, float]], cores: Sequence[Any], latency: float) -> dict[str, float]:
    """Where each core's wall time beyond its modelled NPU time went, ms per encode(), mean over the cores:
    before its first call, inside calls beyond the modelled sleep (waking, waiting for the GIL, the
    double's own work), between calls, and after its last call. With the modelled time they add up
    to the wall time of encode()."""
    lost = dict.fromkeys(LOSSES, 0.0)
    for start, end in windows:
        by_core: dict[Any, list[Any]] = {tuple(core): [] for core in cores}
        for call in calls:
            if start <= call.start <= end:
                by_core[call.core].append(call)
        for core_calls in by_core.values():
            if not core_calls:  # idle throughout
                lost["before_first_call_ms"] += end - start
                continue
            core_calls.sort(key=lambda call: call.start)
            lost["before_first_call_ms"] += core_calls[0].start - start
            lost["in_calls_beyond_model_ms"] += sum(c.end - c.start - c.sentences * latency for c in core_calls)
            lost["between_calls_ms"] += sum(b.start - a.end for a, b in itertools.pairwise(core_calls))
            lost["after_last_call_ms"] += end - core_calls[-1].end
    per_core_and_encode = 1e3 / (len(cores) * max(1, len(windows)))
    return {name: value * per_core_and_encode for name, value in lost.items()}


def _hidden_size(bundle: Path) -> int:
    from bertnpu_runtime.bundle import Bundle

    return Bundle(bundle, verify=False).manifest.hidden_size


if __name__ == "__main__":
    main()
