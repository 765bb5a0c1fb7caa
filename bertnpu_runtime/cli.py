"""`bertnpu` command line: encode lines to a .npy file, or print a similarity table.

    bertnpu encode --bundle DIR "A man plays guitar." "Someone plays an instrument."
    bertnpu encode --bundle DIR --input sentences.txt --output vectors.npy
    cat sentences.txt | bertnpu encode --bundle DIR --input - --output vectors.npy
    bertnpu info --bundle DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from .encoder import SentenceEncoder
from .errors import BertNpuError
from .pooling import l2_normalize


def main(argv: Sequence[str] | None = None) -> int:
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

    encode = commands.add_parser("encode", help="encode sentences: a similarity table, or vectors to .npy")
    _add_encoder_options(encode)
    encode.add_argument("sentences", nargs="*", help="sentences for a cosine-similarity table")
    encode.add_argument("--input", metavar="FILE", help="text file, one sentence per line ('-' for stdin)")
    encode.add_argument("--output", metavar="NPY", help="write the [n, dim] float32 vectors here (with --input)")
    encode.add_argument(
        "--batch-size", type=int, default=None,
        help="most sentences per encoder call (default: 32 on ONNX, 64 on the NPU)",
    )  # fmt: skip
    encode.add_argument("--normalize", action="store_true", help="L2-normalize the vectors")
    encode.set_defaults(run=_encode)

    info = commands.add_parser("info", help="describe a bundle and the backend that would run it")
    _add_encoder_options(info)
    info.set_defaults(run=_info)
    return parser


def _add_encoder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="bundle folder written by `python -m compile`")
    parser.add_argument("--backend", choices=("auto", "npu", "onnx"), default="auto")
    parser.add_argument("--precision", choices=("float32", "int8"), default="float32")
    parser.add_argument("--device", type=int, default=0, help="NPU device number")
    parser.add_argument("--npu-cores", type=int, default=None, help="number of NPU cores to use")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("-v", "--verbose", action="store_true", help="log which backend runs and progress")


def _open(args: argparse.Namespace) -> SentenceEncoder:
    return SentenceEncoder(
        args.bundle,
        backend=args.backend,
        precision=args.precision,
        device_no=args.device,
        npu_cores=args.npu_cores,
        num_threads=args.threads,
    )


def _encode(args: argparse.Namespace) -> int:
    if args.input is not None and args.sentences:
        raise ValueError("give sentences as arguments or --input FILE, not both")
    if args.input is None and not args.sentences:
        raise ValueError("nothing to encode: give sentences as arguments or --input FILE")
    if args.input is not None and args.output is None:
        raise ValueError("--input needs --output FILE.npy for the vectors")
    sentences = _read_lines(args.input) if args.input is not None else list(args.sentences)
    with _open(args) as encoder:
        vectors = encoder.encode(sentences, batch_size=args.batch_size, normalize_embeddings=args.normalize)
    if args.output is not None:
        np.save(args.output, vectors)
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 vectors to {args.output}", file=sys.stderr)
    else:
        _print_similarity_table(sentences, vectors, sys.stdout)
    return 0


def _info(args: argparse.Namespace) -> int:
    with _open(args) as encoder:
        manifest = encoder.manifest
        print(json.dumps({
            "source_model": manifest.source_model,
            "backend": encoder.backend,
            "precision": encoder.precision,
            "dim": encoder.dim,
            "max_seq_length": encoder.max_seq_length,
            "num_layers": manifest.num_layers,
            "pooling": manifest.pooling,
            "normalize": manifest.normalize,
            "files": sorted(f for f in manifest.files if not f.startswith("calib/")),
        }, indent=2))
    return 0


def _read_lines(path: str) -> list[str]:
    if path == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


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
