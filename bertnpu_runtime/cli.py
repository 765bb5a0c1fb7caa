"""`bertnpu` command line: encode lines to a .npy file, or print a similarity table.

bertnpu encode --bundle DIR "A man plays guitar." "Someone plays an instrument."
bertnpu encode --bundle DIR --input sentences.txt --output vectors.npy
cat sentences.txt | bertnpu encode --bundle DIR --input - --output vectors.npy
bertnpu info --bundle DIR
bertnpu serve --bundle DIR [--host 127.0.0.1] [--port 8000]     (the serve extra)
bertnpu embed-corpus --bundle DIR --input corpus.parquet --output vectors/   (the ray extra)
bertnpu compile --model default --out DIR        (the same as python -m compile)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TextIO

import numpy as np

from .backends.npu_device import list_npu_devices
from .bundle import MXQ_FILE
from .encoder import SentenceEncoder
from .errors import BackendUnavailableError, BertNpuError
from .monitor import npu_status
from .opening import open_model
from .options import CORE_MODES, BackendOptions, NpuOptions, OnnxOptions
from .pooling import l2_normalize


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compile"]:
        return _compile(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except (BertNpuError, OSError, ValueError) as exc:
        print(f"bertnpu: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertnpu", description="Sentence vectors from a bertnpu bundle.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    commands.add_parser("compile", help="build a bundle from a model (python -m compile; needs the compile extra)")

    encode = commands.add_parser("encode", help="encode sentences: a similarity table, or vectors to .npy")
    _add_encoder_options(encode)
    encode.add_argument("sentences", nargs="*", help="sentences for a cosine-similarity table")
    encode.add_argument("--input", metavar="FILE", help="text file, one sentence per line ('-' for stdin)")
    encode.add_argument(
        "--output",
        metavar="NPY",
        help="write the [n, dim] float32 vectors to this .npy file instead of printing a similarity table",
    )
    encode.add_argument(
        "--allow-empty", action="store_true", help="an empty --input writes a [0, dim] file instead of failing"
    )
    encode.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="most sentences per encoder call (default: 32 on ONNX, 64 on the NPU)",
    )
    encode.add_argument("--normalize", action="store_true", help="L2-normalize the vectors")
    encode.set_defaults(run=_encode)

    info = commands.add_parser("info", help="describe a bundle and the backend that would run it")
    _add_encoder_options(info)
    info.set_defaults(run=_info)

    serve = commands.add_parser("serve", help="an OpenAI- and TEI-compatible embedding server (needs the serve extra)")
    _add_encoder_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--model-name", help="the model name clients send (default: the bundle's model name)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("BERTNPU_API_KEY"),
        help="require Authorization: Bearer KEY (default: $BERTNPU_API_KEY)",
    )
    for flag, default, what in (
        ("--max-batch-tokens", 16_384, "most tokens in one encoder batch across requests"),
        ("--max-queue-requests", 1024, "most requests waiting; more are answered 503 (TEI route: 429)"),
        ("--max-request-texts", 2048, "most texts in one request; more are answered 413"),
    ):
        serve.add_argument(flag, type=_positive_int, default=default, help=f"{what} (default: {default})")
    serve.add_argument(
        "--max-queue-tokens",
        type=_positive_int,
        help="most tokens waiting for the encoder; a request that would pass it is answered 503 "
        "(default: 64 x --max-batch-tokens)",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long an idle encoder waits for more requests before a batch (default: 0; requests that arrive while it runs always share the next)",
    )
    serve.add_argument(
        "--on-overflow",
        choices=("truncate", "error"),
        default="truncate",
        help="texts longer than the model's length on the OpenAI-style routes: truncated as encode() does, "
        "or a 400 naming the index",
    )
    serve.add_argument(
        "--auto-truncate",
        action="store_true",
        help="TEI's name: truncate over-long texts on every route, whatever a request's `truncate` says",
    )
    serve.add_argument(
        "--payload-limit",
        type=_positive_int,
        default=2_000_000,
        help="largest request body in bytes (default: 2000000, TEI's)",
    )
    serve.add_argument(
        "--cors-allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="answer browsers (CORS, preflight included) from this origin; repeat for more, * for any",
    )
    serve.set_defaults(run=_serve)

    corpus = commands.add_parser(
        "embed-corpus", help="embed a corpus into Parquet shards with Ray (needs the ray extra)"
    )
    _add_encoder_options(corpus)
    corpus.add_argument(
        "--input",
        required=True,
        help="Parquet file or folder, JSONL, or a text file of lines; a path or a URI (s3://, gs://, ...)",
    )
    corpus.add_argument("--output", required=True, help="folder (or URI) for the shard-NNNNN.parquet files")
    corpus.add_argument("--text-column", default="text", help="the input's text column (default: text)")
    corpus.add_argument(
        "--id-column", default="id", help="the input's id column, copied beside the vectors (default: id)"
    )
    corpus.add_argument(
        "--ray-address", help="a Ray cluster to join (default: start a local one; 'auto' for the running one)"
    )
    corpus.add_argument("--actors", type=_positive_int, default=1, help="encoder actors (default: 1)")
    corpus.add_argument(
        "--npu-per-actor", type=float, default=0, help="mobilint_npu resource per actor; 0 = CPU actors on ONNX"
    )
    corpus.add_argument("--batch-size", type=_positive_int, default=None, help="encode() batch size in each actor")
    corpus.add_argument(
        "--shard-rows", type=_positive_int, default=10_000, help="rows per output shard (default: 10000)"
    )
    corpus.set_defaults(run=_embed_corpus)
    return parser


def _embed_corpus(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401 - only to say which extra is missing

        from .corpus import embed_corpus
    except ImportError as exc:
        raise _missing_extra("embed-corpus", "ray", exc) from exc
    result = embed_corpus(
        args.bundle,
        args.input,
        args.output,
        text_column=args.text_column,
        id_column=args.id_column,
        ray_address=args.ray_address,
        actors=args.actors,
        npu_per_actor=args.npu_per_actor,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows,
        options=_backend_options(args),
    )
    for row_id, reason in result.errors[:20]:
        print(f"bertnpu: row {args.id_column}={row_id!r} has no vector: {reason}", file=sys.stderr)
    print(
        f"wrote {len(result.written)} shard(s) to {args.output}, skipped {len(result.skipped)} already written"
        f"{f', {len(result.errors)} row(s) without a vector' if result.errors else ''}"
    )
    return 1 if result.errors else 0


def _missing_extra(command: str, extra: str, exc: ImportError) -> BackendUnavailableError:
    return BackendUnavailableError(f"bertnpu {command} needs the {extra} extra: pip install 'bertnpu[{extra}]' ({exc})")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, found {value}")
    return value


def _add_encoder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="bundle folder written by `python -m compile`")
    parser.add_argument("--backend", choices=("auto", "npu", "onnx"), default="auto")
    parser.add_argument(
        "--encoder-precision",
        choices=("float32", "int8"),
        default="float32",
        help="the ONNX encoder graph: float32, or the int8 preview of NPU quantization",
    )
    parser.add_argument("--device", type=int, default=0, help="NPU device number")
    parser.add_argument("--npu-device-name", help="open the NPU card by board name (aries, regulus, ...)")
    parser.add_argument("--npu-core-mode", choices=CORE_MODES, default="single", help="NPU core mode (default: single)")
    parser.add_argument("--npu-cores", type=int, default=None, help="number of NPU cores to use (single-core mode)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("-v", "--verbose", action="store_true", help="log which backend runs and progress")


def _compile(argv: list[str]) -> int:
    """`bertnpu compile ...` is `python -m compile ...`, where the compile extra is installed."""
    try:
        from compile.cli import main as compile_main
    except ImportError as exc:
        print(
            f"bertnpu: error: compile needs the compile extra: pip install 'bertnpu[compile]' ({exc})", file=sys.stderr
        )
        return 2
    return compile_main(argv)


def _backend_options(args: argparse.Namespace) -> BackendOptions:
    return BackendOptions(
        args.backend,
        npu=NpuOptions(
            device_no=args.device,
            device_name=args.npu_device_name,
            core_mode=args.npu_core_mode,
            cores=args.npu_cores,
        ),
        onnx=OnnxOptions(precision=args.encoder_precision, num_threads=args.threads),
    )


def _open(args: argparse.Namespace) -> SentenceEncoder:
    return SentenceEncoder.from_options(args.bundle, _backend_options(args))


def _serve(args: argparse.Namespace) -> int:
    try:
        from .serve.app import ServeSettings
        from .serve.server import serve
    except ImportError as exc:
        raise _missing_extra("serve", "serve", exc) from exc
    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms must be at least 0, found {args.max_wait_ms}")
    logging.getLogger("bertnpu.serve").setLevel(logging.INFO)
    logging.getLogger("bertnpu.serve.progress").setLevel(logging.INFO if args.verbose else logging.WARNING)
    settings = ServeSettings(
        bundle=args.bundle,
        model_name=args.model_name,
        api_key=args.api_key,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue_requests=args.max_queue_requests,
        max_queue_tokens=args.max_queue_tokens,
        max_request_texts=args.max_request_texts,
        on_overflow=args.on_overflow,
        auto_truncate=args.auto_truncate,
        max_body_bytes=args.payload_limit,
        cors_allow_origins=tuple(args.cors_allow_origin),
        backend=_backend_options(args),
    )
    return serve(settings, host=args.host, port=args.port)


def _encode(args: argparse.Namespace) -> int:
    if args.input is not None and args.sentences:
        raise ValueError("give sentences as arguments or --input FILE, not both")
    if args.input is None and not args.sentences:
        raise ValueError("nothing to encode: give sentences as arguments or --input FILE")
    if args.input is not None and args.output is None:
        raise ValueError("--input needs --output FILE.npy for the vectors")
    output = _npy_path(args.output) if args.output is not None else None  # a bad path fails before any work
    sentences = _read_lines(args.input) if args.input is not None else list(args.sentences)
    if not sentences and not args.allow_empty:
        source = "standard input" if args.input == "-" else args.input
        raise ValueError(f"{source}: no lines to encode; pass --allow-empty to write a [0, dim] array anyway")
    with _open(args) as encoder:
        vectors = encoder.encode(sentences, batch_size=args.batch_size, normalize_embeddings=args.normalize)
    if output is not None:
        _save_npy(output, vectors)
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 vectors to {output}", file=sys.stderr)
    else:
        _print_similarity_table(sentences, vectors, sys.stdout)
    return 0


def _info(args: argparse.Namespace) -> int:
    with open_model(args.bundle, _backend_options(args)) as encoder:
        manifest = encoder.manifest
        print(
            json.dumps(
                {
                    "bundle": str(encoder.bundle_dir.resolve()),
                    "source_model": manifest.source_model,
                    "backend": encoder.backend,
                    "backend_reason": encoder.backend_reason,
                    "family": manifest.family,
                    "task": manifest.task,
                    "encoder_precision": encoder.options.onnx.precision,
                    "dim": manifest.hidden_size,
                    **({"head": manifest.head} if manifest.head else {}),
                    "max_seq_length": encoder.max_seq_length,
                    "num_layers": manifest.num_layers,
                    "pooling": manifest.pooling,
                    "normalize": manifest.normalize,
                    "files": sorted(f for f in manifest.files if not f.startswith("calib/")),
                    # how model.mxq was compiled: recipe (graph), board, core modes, mask input
                    "npu_mxq": dataclasses.asdict(manifest.npu) if MXQ_FILE in manifest.files else None,
                    "libraries": {
                        name: _version(name)
                        for name in (
                            "bertnpu",
                            "onnxruntime",
                            "mobilint-qb-runtime",
                            "mobilint-ml",
                            "tokenizers",
                            "numpy",
                        )
                    },
                    "npu_devices": list_npu_devices(),
                    "npu_cores_in_service": encoder.npu_cores_in_service,
                    "npu_monitor": npu_status(),
                },
                indent=2,
            )
        )
    return 0


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 file, or of standard input for "-", without their line ends."""
    name = "standard input" if path == "-" else path
    if path == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    else:
        with open(path, "rb") as f:
            raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{name}: not UTF-8 text (byte {exc.start}, line {line}: {exc.reason})") from None
    lines = re.split("\r\n|\r|\n", text)  # the line ends open() in text mode knows, and only those
    if lines[-1] == "":
        lines.pop()  # the last line's end, or an empty input
    return lines


def _npy_path(output: str) -> Path:
    """Where np.save writes `output` (it adds ".npy" to a name without it), checked to be writable
    before any work; a folder, a missing folder or one this process cannot write in is an error."""
    path = Path(output)
    if path.is_dir() or output.endswith(os.sep):
        raise ValueError(f"--output {output}: is a folder; give a file name such as {path / 'vectors.npy'}")
    path = path if path.suffix == ".npy" else path.with_name(path.name + ".npy")
    if not path.parent.is_dir():
        raise ValueError(f"--output {output}: the folder {path.parent} does not exist")
    try:  # the way _save_npy will write, tried now rather than after the whole encode
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"--output {output}: cannot write in {path.parent} ({exc.strerror or exc})") from exc
    return path


def _save_npy(path: Path, vectors: np.ndarray) -> None:
    """Write `vectors` to `path` whole or not at all: into a temporary file beside it, then renamed."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise OSError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, vectors)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it owner-only; open() would not
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(f"cannot write {path}: {exc.strerror or exc}; nothing was written there") from exc
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _print_similarity_table(sentences: list[str], vectors: np.ndarray, out: TextIO) -> None:
    unit = l2_normalize(vectors)
    similarity = unit @ unit.T
    for i, sentence in enumerate(sentences):
        print(f"[{i}] {sentence}", file=out)
    print(file=out)
    print("cosine " + "".join(f"{f'[{j}]':>8}" for j in range(len(sentences))), file=out)
    for i, row in enumerate(similarity):
        print(f"{f'[{i}]':<7}" + "".join(f"{value:8.3f}" for value in row), file=out)


if __name__ == "__main__":
    sys.exit(main())
