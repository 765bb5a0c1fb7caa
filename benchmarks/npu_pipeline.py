"""NPU pipeline: does the host keep 1, 2 and 4 NPU cores busy? Measured with the qbruntime test double, or on a card.

    python -m benchmarks.npu_pipeline [--bundle DIR] [--latency-us 100 [150 ...]] [--cores 1 2 4] [--copies K] [--quick]
    python -m benchmarks.npu_pipeline --device [--device-no N] [--cores 1 2 4 8] [--trace FILE] ...   # on a card; the bundle needs model.mxq

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

With --device the same encode() runs on the card's cores through qbruntime, one core count after
another, and the NPU rate is measured: the cores' throughput on the same batches embedded
beforehand, with the host thread asleep. `npu_rate_per_core_vs_1_core` near 1 says the cores
scale; near 1 / cores, that `infer` holds Python's GIL and the cores take turns. Each row also
records what mobilint-ml reports (utilisation, memory, temperature, power) after its runs, and
`--trace FILE` writes qbruntime's event trace of each core count to FILE with the count in its name.

Calls hold one sentence each, the runtime's default in single-core mode; `--group-sentences`
sends sentences of one length together (and lets the double take such calls), to measure what
the default costs the host.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bertnpu_runtime.pipeline import HostBatch

from .common import (
    Run,
    base_parser,
    interleave,
    print_table,
    run_metadata,
    start_run,
    summarize,
    write_json,
)
from .stages import summarize_stages, time_stages_once

LOSSES = ("before_first_call_ms", "in_calls_beyond_model_ms", "between_calls_ms", "after_last_call_ms")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0], "npu_pipeline")
    parser.add_argument(
        "--latency-us",
        type=float,
        nargs="+",
        default=None,
        help="modelled NPU time per sentence per core; several values take turns (default: 100)",
    )
    parser.add_argument(
        "--cores", type=int, nargs="+", default=[1, 2, 4], help="NPU core counts to run (default: 1 2 4)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="encode() batch size (default: the NPU backend's, SentenceEncoder.default_batch_size)",
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="each encode() gets the STS-B dev sentences this many times over, in one list (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        action="store_true",
        help="run on the NPU card through qbruntime and the bundle's model.mxq, not the test double (no --latency-us)",
    )
    parser.add_argument("--device-no", type=int, default=0, help="with --device: which card (default: %(default)s)")
    parser.add_argument("--trace", type=Path, help="with --device: qbruntime's event trace, one file per core count")
    parser.add_argument(
        "--group-sentences",
        action="store_true",
        help="several sentences of one length per NPU call (default: one per call, the runtime's default)",
    )
    args = parser.parse_args(argv)
    if args.trace is not None and not args.device:
        parser.error("--trace records qbruntime's events on a card: use it with --device")
    if args.copies < 1:
        parser.error(f"--copies must be at least 1, found {args.copies}")
    if args.device and args.latency_us is not None:
        parser.error("--latency-us models the test double's NPU; with --device the card's own time is measured")
    if not args.device and args.latency_us is None:
        args.latency_us = [100.0]
    if any(latency < 0 for latency in args.latency_us or []):
        parser.error("--latency-us must be 0 (an infinitely fast NPU: the host alone) or more")
    if args.batch_size is None:
        from bertnpu_runtime.backends.npu import NpuEncoder

        args.batch_size = NpuEncoder.PREFERRED_BATCH_SIZE
    return args


@dataclass
class _Timings:
    """What the encode() runs of one case recorded, the untimed warm-up first (see _timed_encode)."""

    windows: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each encode()
    cpu: list[tuple[float, float, int]] = field(default_factory=list)  # CPU s: this thread, core threads; page faults


def main(argv: Sequence[str] | None = None, qbruntime_module: Any = None) -> dict[str, Any]:
    """Measure host rate and NPU-pipeline throughput per core count (and latency, on the test double);
    print tables, write JSON. `qbruntime_module` stands in for qbruntime with --device (in tests)."""
    args = parse_args(argv)
    run = start_run(args)
    sentences = run.sentences * args.copies
    if args.device:
        host, rows = _on_device(args, run, sentences, qbruntime_module)
    else:
        host, rows = _with_test_double(args, run, sentences)

    copies = f" ({args.copies} copies of {len(run.sentences)})" if args.copies > 1 else ""
    workload = (
        f"{len(sentences)} STS-B sentences{copies} per encode(), batch {args.batch_size}, {run.repeats} repeats; "
        f"host stages {host['host']['us_per_sentence_median']:.1f} us/sentence"
    )
    case = ("npu_cores",) if args.device else ("latency_us", "npu_cores")  # what tells the rows apart
    if args.device:
        title = f"NPU pipeline on device {args.device_no} (npu_rate: the cores with the host idle)"
        beside_the_bound = ("npu_rate_per_core_vs_1_core",)
    else:
        title = "NPU pipeline (test double; latency = modelled us per sentence per core)"
        beside_the_bound = ("prepared_vs_bound", "infer_calls_per_encode")
    print_table(
        f"{title}: {workload}",
        rows,
        (*case, "sentences_per_s", "host_rate", "npu_rate", "limited_by", "achieved_vs_bound", *beside_the_bound),
    )
    if not args.device:  # the loss table reads the double's log of infer calls
        print_table(
            "Time beyond the modelled NPU time: ms per encode(), mean over the cores (wall = modelled + these)",
            rows,
            (*case, "wall_ms_per_encode", *LOSSES),
        )
    print_table(
        "Inside encode(): CPU time per sentence on the calling thread and on the core threads, "
        "and the calling thread's page faults (medians over the repeats)",
        rows,
        (*case, "host_cpu_us_per_sentence", "core_threads_cpu_us_per_sentence", "host_page_faults_per_encode"),
    )
    result = {
        "benchmark": "npu_pipeline",
        "meta": run_metadata(args),
        "npu": f"device {args.device_no}" if args.device else "test double",
        "group_sentences": args.group_sentences,
        "latencies_us_per_sentence": None if args.device else args.latency_us,
        "batch_size": args.batch_size,
        "sentences": len(sentences),
        "copies": args.copies,
        "host_stages": host,
        "rows": rows,
    }
    write_json(args.out, result)
    return result


def _with_test_double(
    args: argparse.Namespace, run: Run, sentences: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every latency and core count on the test double, taking turns in each round; (host stages, rows)."""
    from bertnpu_runtime.testing.bundles import bundle_with_placeholder_mxq

    repeats = run.repeats
    runs = [(latency_us, cores) for latency_us in args.latency_us for cores in args.cores]
    with tempfile.TemporaryDirectory(prefix="bertnpu-bench-") as scratch:
        npu_bundle = bundle_with_placeholder_mxq(run.bundle, Path(scratch) / "bundle")
        fakes, encoders, core_ids, ceiling_encoders, ceiling_fakes = {}, {}, {}, {}, {}
        hidden_size = _hidden_size(npu_bundle)
        try:
            for cores in args.cores:  # one encoder per core count serves every latency (see _at_latency)
                encoders[cores], fakes[cores] = _npu_encoder(npu_bundle, cores, hidden_size, args.group_sentences)
                ceiling_encoders[cores], ceiling_fakes[cores] = _npu_encoder(
                    npu_bundle, cores, hidden_size, args.group_sentences
                )
                core_ids[cores] = encoders[cores].pipeline.backend.cores  # (cluster, core) pairs
            # The host stages alone take turns with the encode() runs, so both see the same machine.
            host_runs: list[dict[str, float]] = []
            first = next(iter(encoders.values()))
            tasks = {"host": partial(_time_host_stages, first, sentences, args.batch_size, host_runs)}
            timings = {key: _Timings() for key in runs}
            # The ceiling: encode()'s batches, embedded beforehand, all submitted at once, so the host
            # does nothing while the cores run. What is lost there is the double's and the machine's.
            prepared = list(first.pipeline.host_batches(sentences, args.batch_size, truncated=[]))
            for key in runs:
                latency, cores = key[0] * 1e-6, key[1]
                timed = partial(_timed_encode, encoders[cores], sentences, args.batch_size, timings[key])
                tasks[key] = _at_latency(fakes[cores], latency, timed)
                tasks[(*key, "prepared")] = _at_latency(
                    ceiling_fakes[cores], latency, partial(_run_prepared, ceiling_encoders[cores], prepared)
                )
            seconds = interleave(tasks, repeats, warmup=1)
        finally:
            for encoder in [*encoders.values(), *ceiling_encoders.values()]:
                encoder.close()

    host, host_rate = _host_stages(host_runs[1:], len(sentences))  # [0] was the warm-up
    rows = []
    for latency_us, cores in runs:
        key, latency = (latency_us, cores), latency_us * 1e-6
        row = {
            "latency_us": latency_us,
            **_pipeline_row(cores, len(sentences), seconds[key], timings[key], host_rate, _npu_rate(cores, latency)),
        }
        ceiling = len(sentences) / summarize(seconds[(*key, "prepared")])["median"]
        calls = _calls_within(fakes[cores].calls, timings[key].windows)  # this latency's encode()s, the warm-up too
        busy = sum(call.end - call.start for call in calls) / (cores * (repeats + 1))  # per encode(), per core
        rows.append(
            {
                **row,
                "prepared_sentences_per_s": ceiling,
                "prepared_vs_bound": ceiling / row["bound"],
                "infer_calls_per_encode": len(calls) / (repeats + 1),
                "npu_busy_s_per_core": busy,
                "npu_modelled_s_per_core": len(sentences) * latency / cores,
                **_time_lost(calls, timings[key].windows[1:], core_ids[cores], latency),
            }
        )
    return host, rows


def _on_device(
    args: argparse.Namespace, run: Run, sentences: list[str], qbruntime_module: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every core count on the card, one after another (a core serves one encoder at a time), with the
    host stages and the cores' own rate taking turns with encode(); (host stages, rows).

    The NPU rate is measured, not modelled: encode()'s batches, embedded beforehand and submitted at
    once while the host thread sleeps (the test double's `prepared` run).
    """
    from bertnpu_runtime import SentenceEncoder
    from bertnpu_runtime.errors import BackendUnavailableError
    from bertnpu_runtime.monitor import npu_status

    host_runs: list[dict[str, float]] = []
    measured, monitored = {}, {}
    for cores in args.cores:
        trace = (
            None if args.trace is None else args.trace.with_name(f"{args.trace.stem}-{cores}cores{args.trace.suffix}")
        )
        try:
            encoder = SentenceEncoder(
                run.bundle,
                backend="npu",
                device_no=args.device_no,
                npu_cores=cores,
                npu_group_sentences=args.group_sentences,
                npu_trace_path=trace,
                qbruntime_module=qbruntime_module,
            )
        except (BackendUnavailableError, ValueError) as exc:
            raise SystemExit(f"--device: {exc}") from exc
        with encoder:
            runs: list[dict[str, float]] = []
            timings = _Timings()
            prepared = list(encoder.pipeline.host_batches(sentences, args.batch_size, truncated=[]))
            tasks = {
                "host": partial(_time_host_stages, encoder, sentences, args.batch_size, runs),
                "encode": partial(_timed_encode, encoder, sentences, args.batch_size, timings),
                "prepared": partial(_run_prepared, encoder, prepared),
            }
            seconds = interleave(tasks, run.repeats, warmup=1)
            monitored[cores] = npu_status()  # while the models are still launched
        host_runs += runs[1:]  # [0] was the warm-up
        measured[cores] = (seconds, timings)

    host, host_rate = _host_stages(host_runs, len(sentences))
    npu_rates = {
        cores: len(sentences) / summarize(seconds["prepared"])["median"] for cores, (seconds, _) in measured.items()
    }
    rows = []
    for cores, (seconds, timings) in measured.items():
        per_core_vs_1 = npu_rates[cores] / cores / npu_rates[1] if 1 in npu_rates else None
        rows.append(
            {
                **_pipeline_row(cores, len(sentences), seconds["encode"], timings, host_rate, npu_rates[cores]),
                "npu_rate_per_core_vs_1_core": per_core_vs_1,
                "npu_monitor": monitored[cores],
            }
        )
    return host, rows


def _npu_rate(cores: int, latency_s: float) -> float | None:
    """Sentences/s the modelled NPU can take; None for latency 0, an infinitely fast NPU (the bound
    is then the host's rate alone)."""
    return cores / latency_s if latency_s > 0 else None


def _pipeline_row(
    cores: int,
    sentences: int,
    encode_seconds: list[float],
    timings: _Timings,
    host_rate: float,
    npu_rate: float | None,
) -> dict[str, Any]:
    """The measures both modes report for one case: throughput against the bound, and CPU inside
    encode(). npu_rate None: no NPU limit (latency 0)."""
    achieved = sentences / summarize(encode_seconds)["median"]
    bound = host_rate if npu_rate is None else min(host_rate, npu_rate)
    host_cpu, threads_cpu, faults = (statistics.median(column) for column in zip(*timings.cpu[1:]))  # [0]: warm-up
    walls = [end - start for start, end in timings.windows[1:]]
    return {
        "npu_cores": cores,
        "sentences_per_s": achieved,
        "host_rate": host_rate,
        "npu_rate": npu_rate,
        "bound": bound,
        "limited_by": "host" if npu_rate is None or host_rate < npu_rate else "npu",
        "achieved_vs_bound": achieved / bound,
        "wall_ms_per_encode": 1e3 * sum(walls) / len(walls),
        "host_cpu_us_per_sentence": 1e6 * host_cpu / sentences,
        "core_threads_cpu_us_per_sentence": 1e6 * threads_cpu / sentences,
        "host_page_faults_per_encode": faults,
    }


def _host_stages(host_runs: Sequence[dict[str, float]], sentences: int) -> tuple[dict[str, Any], float]:
    """The host stages' us per sentence (median and p95 per stage) over the timed runs, and the host
    rate: sentences/s of tokenize + embed + pool alone, from the median."""
    host = summarize_stages(host_runs, sentences, with_encoder=False)
    return host, 1e6 / host["host"]["us_per_sentence_median"]


def _time_host_stages(
    encoder: Any, sentences: list[str], batch_size: int, runs: list[dict[str, float]], _: int
) -> None:
    """A benchmark task: the host stages alone, once; appends their seconds to `runs`."""
    runs.append(time_stages_once(encoder, sentences, batch_size, run_encoder=False))


def _npu_encoder(bundle: Path, cores: int, hidden_size: int, group: bool) -> tuple[Any, Any]:
    """A SentenceEncoder on `cores` cores of a fresh test double, and the double (its latency_s is set
    per run); `group`: several sentences per call, which the double then accepts."""
    from bertnpu_runtime import SentenceEncoder
    from bertnpu_runtime.testing import FakeNpu

    fake = FakeNpu(hidden_size=hidden_size, num_cores=8, max_batch=None if group else 1)
    encoder = SentenceEncoder(bundle, backend="npu", npu_cores=cores, npu_group_sentences=group, qbruntime_module=fake)
    return encoder, fake


def _at_latency(fake: Any, latency: float, run: Callable[[], object]) -> Callable[[int], None]:
    """A benchmark task: set the double's modelled latency (seconds per sentence), then run."""

    def task(_: int) -> None:
        fake.latency_s = latency
        run()

    return task


def _run_prepared(encoder: Any, batches: Sequence[HostBatch], _: int = 0) -> None:
    """Submit embedded batches to the encoder's NPU backend at once; wait for all, the last first,
    so that the host thread sleeps until the cores are nearly done."""
    backend = encoder.pipeline.backend
    pending = [backend.submit(batch.hidden, batch.mask) for batch in batches]
    for batch in reversed(pending):
        batch.result()


def _timed_encode(encoder: Any, sentences: list[str], batch_size: int, timings: _Timings, _: int = 0) -> None:
    """encode() once; records its (start, end), its CPU seconds (this thread, the core threads) and this
    thread's minor page faults in `timings`."""
    core_clocks = [time.pthread_getcpuclockid(ident) for ident in encoder.pipeline.backend.worker_thread_ids]
    host_before, cores_before = time.thread_time(), sum(map(time.clock_gettime, core_clocks))
    faults_before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    start = time.perf_counter()
    encoder.encode(sentences, batch_size=batch_size)
    timings.windows.append((start, time.perf_counter()))
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults_before
    timings.cpu.append(
        (time.thread_time() - host_before, sum(map(time.clock_gettime, core_clocks)) - cores_before, faults)
    )


def _calls_within(calls: Sequence[Any], windows: Sequence[tuple[float, float]]) -> list[Any]:
    """The infer calls that started inside one of the (start, end) windows."""
    return [call for call in calls if any(start <= call.start <= end for start, end in windows)]


def _time_lost(
    calls: Sequence[Any], windows: Sequence[tuple[float, float]], cores: Sequence[Any], latency: float
) -> dict[str, float]:
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
