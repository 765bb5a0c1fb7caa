"""Serving: `bertnpu serve` under closed-loop load on loopback, beside infinity-emb on the same model
and the in-process encode() rate as the ceiling.

    python -m benchmarks.serve [--bundle DIR] [--concurrency 1 8 64] [--texts 1 32] [--seconds 8]
                               [--infinity PATH/TO/infinity_emb] [--mixed BIG SMALL] [--baseline DIR]
                               [--quick]

Each case (texts per request x concurrent clients) runs every server in turn, `--repeats` rounds
(medians reported). A client keeps one keep-alive connection and sends its next request as soon as
the last is answered (closed loop), for `--seconds` or `--requests` per case, whichever ends first;
requests carry STS-B dev sentences in file order, to the OpenAI route (`/embeddings`,
encoding_format float). `server_cpu_ms_per_request`: the CPU time of the server's process (all its
threads) per answered request, on Linux: what a request costs the machine the clients share;
`server_loop_cpu_ms_per_request`, its main thread's (uvicorn's event loop: HTTP, parsing,
tokenizing one-sentence requests, answers), a steadier figure than the whole when comparing two
versions of the request path, since the encoder's share drifts with the machine. The
load generator is a minimal asyncio HTTP/1.1 client, so that as little of the machine as possible
goes to the clients; it shares the machine with the servers all the same.

infinity-emb runs only where it is installed (this benchmark installs nothing): give its
`infinity_emb` executable with `--infinity`, or have it on PATH. It serves the bundle's source
model folder on the CPU with torch. `vs_in_process` compares with SentenceEncoder.encode() of all
the sentences in one call, batch 32, in this process with the servers idle, measured in every
round before the servers take their turns: the rate serving is measured against. A server can batch no more than the texts its clients have in flight, though, so
`vs_encode_of_in_flight` compares with encode() called on texts x concurrency sentences at a time
(one pass over the first 1,000 sentences): what batching across requests can reach at best.

`--mixed BIG SMALL` adds the mixed-load case: BIG clients each send requests of `--big-texts` long
texts (STS-B sentences joined to about 1,500 characters, past the model's length), beside SMALL
clients sending one sentence at a time, for `--seconds`; it reports the small requests' p50/p99
(how long a one-sentence request waits behind big ones) and the long texts embedded per second.
`--small-rate R` sends the one-sentence requests open loop instead, R per second, each on a
connection of its own: slow periods are then sampled as often as fast ones. `--texts` with no value
skips the closed-loop cases. `--baseline DIR` also serves from another
checkout (a git worktree of an earlier commit), taking turns with the others: a before/after in
one run; `--baseline-bundle` gives it a bundle of its own (one built by that commit's compile/).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .common import base_parser, check_bundle, print_table, reference_model_folder, run_metadata, start_run, write_json

MODEL_NAME = "bench-model"
BERTNPU_NAME, BASELINE_NAME = "bertnpu serve", "bertnpu serve (baseline)"  # the servers' names in the tables
TIMING_HEADERS = ("tokenization", "queue", "inference", "total")  # TEI's x-NAME-time headers
SERVER_TIMES = tuple(f"small_{name}_p50_ms" for name in TIMING_HEADERS)
START_TIMEOUT_S = 180


def parse_args(argv: Sequence[str] | None):
    parser = base_parser(__doc__.splitlines()[0], "serve")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients (default: 1 8 64)"
    )
    parser.add_argument("--texts", type=int, nargs="*", default=[1, 32], help="texts per request (default: 1 32)")
    parser.add_argument(
        "--mixed", type=int, nargs=2, metavar=("BIG", "SMALL"), help="run the mixed-load case with these clients"
    )
    parser.add_argument("--big-texts", type=int, default=256, help="long texts per big request (default: 256)")
    parser.add_argument(
        "--small-rate",
        type=float,
        help="mixed case: send the one-sentence requests open loop, this many per second, instead of SMALL clients",
    )
    parser.add_argument("--baseline", type=Path, help="also serve from this checkout (an earlier commit's worktree)")
    parser.add_argument(
        "--baseline-bundle", type=Path, help="the bundle the baseline serves (default: --bundle), one its code reads"
    )
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="longest a case runs per server and round (default: 8)"
    )
    parser.add_argument(
        "--requests", type=int, default=4000, help="most requests a case sends per server and round (default: 4000)"
    )
    parser.add_argument("--infinity", help="the infinity_emb executable (default: on PATH, else infinity is left out)")
    parser.add_argument(
        "--max-wait-ms", type=float, default=0.0, help="bertnpu serve --max-wait-ms (default: 0, its default)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.requests = min(args.seconds, 1.0), min(args.requests, 100)
    return args


@dataclass
class Server:
    """A server process on a loopback port, and the route and model name its clients send."""

    name: str
    process: subprocess.Popen
    port: int
    path: str = "/embeddings"

    def cpu_seconds(self) -> tuple[float, float] | None:
        """CPU time the server process has used so far: every thread's, and its main thread's (the
        event loop, for uvicorn); Linux only, else None."""
        pid = self.process.pid
        try:
            return _proc_cpu_seconds(f"/proc/{pid}/stat"), _proc_cpu_seconds(f"/proc/{pid}/task/{pid}/stat")
        except OSError:
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    run = start_run(args)
    sentences = run.sentences
    servers = [_start_bertnpu(run.bundle, args)]
    infinity = args.infinity or shutil.which("infinity_emb")
    mixed_rows: list[dict[str, Any]] = []
    try:
        if args.baseline:
            baseline_bundle = check_bundle(args.baseline_bundle) if args.baseline_bundle else run.bundle
            servers.append(_start_bertnpu(baseline_bundle, args, checkout=args.baseline))
        if infinity:
            servers.append(_start_infinity(infinity, reference_model_folder(run.bundle, args.model), args.threads))
        else:
            print("infinity-emb is not installed here: only bertnpu serve is measured (see benchmarks/README.md)")
        rows = []
        with _InProcess(run.bundle, args.threads, warm_up=sentences[:256]) as in_process:
            for texts in args.texts:
                for concurrency in args.concurrency:
                    measured: dict[str, list[dict[str, float]]] = {server.name: [] for server in servers}
                    for round_no in range(run.repeats):
                        # The in-process rates take their turn in every round, so that the machine's
                        # drift over minutes does not enter the ratios.
                        ceiling = in_process.rate(sentences)
                        in_flight = in_process.rate(sentences[:1000], chunk=texts * concurrency)
                        order = servers[round_no % len(servers) :] + servers[: round_no % len(servers)]
                        for server in order:
                            result = asyncio.run(
                                _load(server, sentences, texts, concurrency, args.seconds, args.requests)
                            )
                            result.update(
                                in_process_sentences_per_s=ceiling, encode_of_in_flight_sentences_per_s=in_flight
                            )
                            measured[server.name].append(result)
                    rows.extend(_row(server.name, texts, concurrency, measured[server.name]) for server in servers)
        _compare(rows)
        if args.mixed:
            mixed_rows = _mixed_case(servers, sentences, args, run.repeats)
    finally:
        for server in servers:
            server.stop()

    columns = (
        "server",
        "texts",
        "concurrency",
        "requests_per_s",
        "sentences_per_s",
        "p50_ms",
        "p99_ms",
        "in_process_sentences_per_s",
        "vs_in_process",
        "vs_encode_of_in_flight",
        "vs_infinity",
        "vs_baseline",
        "server_cpu_ms_per_request",
        "server_loop_cpu_ms_per_request",
        "errors",
    )
    print_table(
        f"Serving on loopback: closed-loop clients, {len(sentences)} STS-B sentences, medians of {run.repeats} rounds "
        "(each round's ratios to the in-process encode() measured in that round)",
        rows,
        columns,
    )
    if mixed_rows:
        print_table(
            f"Mixed load: {args.mixed[0]} clients sending {args.big_texts} long texts per request beside "
            f"{args.mixed[1]} one-sentence clients, {args.seconds} s, medians of {run.repeats} rounds",
            mixed_rows,
            (
                "server",
                "small_p50_ms",
                "small_p99_ms",
                "small_requests_per_s",
                "long_texts_per_s",
                *SERVER_TIMES,
                "errors",
            ),
        )
    result = {"benchmark": "serve", "meta": run_metadata(args), "rows": rows, "mixed": mixed_rows}
    write_json(args.out, result)
    return result


class _InProcess:
    """SentenceEncoder.encode() in this process (the servers idle meanwhile): the ceiling."""

    def __init__(self, bundle: Path, threads: int, warm_up: list[str]) -> None:
        from bertnpu_runtime import SentenceEncoder

        self._encoder = SentenceEncoder(bundle, backend="onnx", num_threads=threads)
        self._encoder.encode(warm_up, batch_size=32)

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._encoder.close()

    def rate(self, sentences: list[str], chunk: int | None = None) -> float:
        """Sentences/s of encode() on all `sentences` at once (batch 32), or `chunk` at a time."""
        step = chunk or len(sentences)
        started = time.perf_counter()
        for start in range(0, len(sentences), step):
            self._encoder.encode(sentences[start : start + step], batch_size=32)
        return len(sentences) / (time.perf_counter() - started)


def _proc_cpu_seconds(stat_file: str) -> float:
    """utime + stime of a /proc stat file (a process's or a thread's), in seconds."""
    fields = Path(stat_file).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_bertnpu(bundle: Path, args: Any, checkout: Path | None = None) -> Server:
    """`bertnpu serve` from this checkout, or (a baseline) from `checkout`'s bertnpu_runtime."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "bertnpu_runtime",
        "serve",
        "--bundle",
        str(bundle.resolve()),
        "--backend",
        "onnx",
        "--threads",
        str(args.threads),
        "--port",
        str(port),
        "--model-name",
        MODEL_NAME,
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    where, name = _code_from(checkout), BERTNPU_NAME if checkout is None else BASELINE_NAME
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, **where)
    return _started(Server(name, process, port))


def _code_from(checkout: Path | None) -> dict[str, Any]:
    """Popen's cwd and env that make `python -m bertnpu_runtime` import `checkout`'s code (None:
    this process's own). `-m` puts the working directory first on sys.path, ahead of PYTHONPATH:
    run from this checkout, a baseline would run this checkout's code."""
    if checkout is None:
        return {}
    root = str(checkout.resolve())
    return {"cwd": root, "env": dict(os.environ, PYTHONPATH=root)}


def _start_infinity(executable: str, model_folder: Path, threads: int) -> Server:
    port = _free_port()
    command = [
        executable,
        "v2",
        "--model-id",
        str(model_folder),
        "--served-model-name",
        MODEL_NAME,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--engine",
        "torch",
        "--device",
        "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return _started(Server("infinity", process, port))


def _started(server: Server) -> Server:
    """Wait until the server answers an embeddings request (so its model is loaded and warm)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited with {server.process.returncode} before serving")
        try:
            status, _ = asyncio.run(_one_request(server, ["warm up"] * 32))
            if status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise SystemExit(f"{server.name} did not serve within {START_TIMEOUT_S} s")


def _request_bytes(server: Server, texts: list[str]) -> bytes:
    body = orjson.dumps({"input": texts, "model": MODEL_NAME, "encoding_format": "float"})
    head = (
        f"POST {server.path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(
    reader: asyncio.StreamReader, timings: list[dict[str, float]] | None = None
) -> tuple[int, bytes]:
    """The status and body of one response; its TEI timing headers (x-*-time, ms) appended to
    `timings` when given and sent (bertnpu sends them, infinity does not)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    if timings is not None and "x-total-time" in fields:
        timings.append({name: float(fields[f"x-{name}-time"]) for name in TIMING_HEADERS})
    return status, await reader.readexactly(int(fields["content-length"]))


async def _one_request(server: Server, texts: list[str]) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(_request_bytes(server, texts))
        return await _read_response(reader)
    finally:
        writer.close()


async def _client(
    server: Server,
    payloads: list[bytes],
    latencies: list[float],
    index: int,
    step: int,
    another: Callable[[], bool],
    timings: list[dict[str, float]] | None = None,
) -> int:
    """One closed-loop client on one keep-alive connection: sends payloads[index], then
    payloads[index + step], ... each when the last is answered, while `another()`; appends each
    latency (and the server's timing headers to `timings`) and returns how many answers were not 200."""
    errors = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        while another():
            started = time.perf_counter()
            writer.write(payloads[index % len(payloads)])
            status, _ = await _read_response(reader, timings)
            latencies.append(time.perf_counter() - started)
            errors += status != 200
            index += step
    finally:
        writer.close()
    return errors


async def _open_loop(
    server: Server,
    payloads: list[bytes],
    latencies: list[float],
    rate: float,
    another: Callable[[], bool],
    timings: list[dict[str, float]] | None = None,
) -> int:
    """Requests sent at a fixed rate, each on a connection of its own, whether or not the earlier
    ones were answered (so slow periods are sampled as often as fast ones); returns the non-200s."""

    async def one(payload: bytes) -> bool:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(payload)
            status, _ = await _read_response(reader, timings)
        finally:
            writer.close()
        latencies.append(time.perf_counter() - started)
        return status != 200

    sends = []
    next_send = time.perf_counter()
    while another():
        sends.append(asyncio.create_task(one(payloads[len(sends) % len(payloads)])))
        next_send += 1 / rate
        await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
    return sum(await asyncio.gather(*sends))


async def _load(
    server: Server, sentences: list[str], texts: int, concurrency: int, seconds: float, requests: int
) -> dict[str, float]:
    """Closed-loop load: `concurrency` clients, each with one connection, until the time or the
    request budget is spent. Returns throughput and latency figures."""
    payloads = [_request_bytes(server, sentences[i : i + texts]) for i in range(0, len(sentences) - texts + 1, texts)]
    latencies: list[float] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    def another() -> bool:
        nonlocal sent
        sent += 1
        return sent <= requests and time.perf_counter() < deadline

    started, cpu_before = time.perf_counter(), server.cpu_seconds()
    errors = sum(
        await asyncio.gather(
            *(_client(server, payloads, latencies, i, concurrency, another) for i in range(concurrency))
        )
    )
    wall, cpu_after = time.perf_counter() - started, server.cpu_seconds()
    cpu_ms = loop_cpu_ms = None
    if cpu_before is not None and cpu_after is not None and latencies:
        cpu_ms, loop_cpu_ms = ((after - before) / len(latencies) * 1000 for before, after in zip(cpu_before, cpu_after))
    return {
        "server_cpu_ms_per_request": cpu_ms,
        "server_loop_cpu_ms_per_request": loop_cpu_ms,
        "requests_per_s": len(latencies) / wall,
        "sentences_per_s": len(latencies) * texts / wall,
        "p50_ms": _percentile_ms(latencies, 0.5),
        "p99_ms": _percentile_ms(latencies, 0.99),
        "errors": errors,
        "requests": len(latencies),
    }


def _percentile_ms(latencies: list[float], fraction: float) -> float:
    """The latency (seconds) below which `fraction` of them fall, in milliseconds."""
    ordered = sorted(latencies)
    return 1e3 * ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def long_texts(sentences: list[str], count: int, chars: int = 1500) -> list[str]:
    """`count` texts of STS-B sentences joined to about `chars` characters each."""
    texts, index = [], 0
    while len(texts) < count:
        parts: list[str] = []
        while sum(map(len, parts)) < chars:
            parts.append(sentences[index % len(sentences)])
            index += 1
        texts.append(" ".join(parts))
    return texts


def _mixed_case(servers: list[Server], sentences: list[str], args: Any, repeats: int) -> list[dict[str, Any]]:
    big_clients, small_clients = args.mixed
    texts = long_texts(sentences, args.big_texts)
    measured: dict[str, list[dict[str, float]]] = {server.name: [] for server in servers}
    for round_no in range(repeats):
        for server in servers[round_no % len(servers) :] + servers[: round_no % len(servers)]:
            result = asyncio.run(
                _mixed_load(server, sentences, texts, big_clients, small_clients, args.seconds, args.small_rate)
            )
            measured[server.name].append(result)
    rows = []
    for server in servers:
        rounds = measured[server.name]
        row: dict[str, Any] = {"server": server.name, "big_clients": big_clients, "small_clients": small_clients}
        for key in ("small_p50_ms", "small_p99_ms", "small_requests_per_s", "long_texts_per_s", *SERVER_TIMES):
            row[key] = statistics.median(r[key] for r in rounds) if key in rounds[0] else None
        row["errors"] = sum(r["errors"] for r in rounds)
        row["rounds"] = rounds
        rows.append(row)
    return rows


async def _mixed_load(
    server: Server,
    sentences: list[str],
    long_texts: list[str],
    big_clients: int,
    small_clients: int,
    seconds: float,
    small_rate: float | None = None,
) -> dict[str, float]:
    """Big clients sending all of `long_texts` per request beside one-sentence clients, closed loop."""
    big_payload = _request_bytes(server, long_texts)
    small_payloads = [_request_bytes(server, [sentence]) for sentence in sentences[:1000]]
    small: list[float] = []
    small_timings: list[dict[str, float]] = []
    big: list[float] = []
    deadline = time.perf_counter() + seconds

    def another() -> bool:
        return time.perf_counter() < deadline

    started = time.perf_counter()
    errors = sum(
        await asyncio.gather(
            *(_client(server, [big_payload], big, 0, 1, another) for _ in range(big_clients)),
            *(
                [_open_loop(server, small_payloads, small, small_rate, another, small_timings)]
                if small_rate
                else (
                    _client(server, small_payloads, small, i, small_clients, another, small_timings)
                    for i in range(small_clients)
                )
            ),
        )
    )
    wall = time.perf_counter() - started
    result = {
        "small_p50_ms": _percentile_ms(small, 0.5),
        "small_p99_ms": _percentile_ms(small, 0.99),
        "small_requests_per_s": len(small) / wall,
        "long_texts_per_s": len(big) * len(long_texts) / wall,
        "errors": errors,
    }
    for name in TIMING_HEADERS:  # where the small requests' time went, by the server's own account
        if small_timings:
            result[f"small_{name}_p50_ms"] = statistics.median(t[name] for t in small_timings)
    return result


def _row(name: str, texts: int, concurrency: int, rounds: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"server": name, "texts": texts, "concurrency": concurrency}
    for key in ("requests_per_s", "sentences_per_s", "p50_ms", "p99_ms", "in_process_sentences_per_s"):
        row[key] = statistics.median(r[key] for r in rounds)
    row["vs_in_process"] = statistics.median(r["sentences_per_s"] / r["in_process_sentences_per_s"] for r in rounds)
    row["vs_encode_of_in_flight"] = statistics.median(
        r["sentences_per_s"] / r["encode_of_in_flight_sentences_per_s"] for r in rounds
    )
    for key in ("server_cpu_ms_per_request", "server_loop_cpu_ms_per_request"):
        cpu = [r[key] for r in rounds if r.get(key) is not None]
        row[key] = statistics.median(cpu) if cpu else None
    row["errors"] = sum(r["errors"] for r in rounds)
    row["requests"] = sum(r["requests"] for r in rounds)
    row["rounds"] = rounds
    return row


def _compare(rows: list[dict[str, Any]]) -> None:
    """bertnpu's throughput over infinity's (`vs_infinity`), and this checkout's over the baseline's
    (`vs_baseline`), in the same case, where both ran: the median of the rounds' own ratios. The
    servers of a round ran within a minute of each other, so their ratio carries less of the
    machine's drift than a ratio of medians; the rounds' ratios are kept beside it (`*_rounds`)."""
    by_case = {(r["server"], r["texts"], r["concurrency"]): r for r in rows}
    for row in rows:
        for column, other_name, compared in (
            ("vs_infinity", "infinity", row["server"] != "infinity"),
            ("vs_baseline", BASELINE_NAME, row["server"] == BERTNPU_NAME),
        ):
            other = by_case.get((other_name, row["texts"], row["concurrency"]))
            ratios = _round_ratios(row, other) if other is not None and compared else None
            row[column] = statistics.median(ratios) if ratios else None
            row[f"{column}_rounds"] = ratios


def _round_ratios(row: dict[str, Any], other: dict[str, Any]) -> list[float]:
    """Sentences/s of `row`'s server over `other`'s, round by round."""
    return [
        mine["sentences_per_s"] / theirs["sentences_per_s"]
        for mine, theirs in zip(row["rounds"], other["rounds"])
        if theirs["sentences_per_s"] > 0
    ]


if __name__ == "__main__":
    main()
