"""Command line for build_bundle: `python -m compile --model MODEL --out DIR [options]`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

from bertnpu_runtime.pooling import POOLING_MODES

from . import qb
from .errors import CompileError
from .pipeline import build_bundle


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m compile",
        description="Build a bertnpu bundle (host embedding tables, tokenizer, ONNX encoder, calibration set, "
        "optionally an .mxq for a Mobilint NPU) from a Sentence-BERT model.",
    )
    parser.add_argument(
        "--model", required=True, help='"default" (embedded all-MiniLM-L6-v2), a model folder, or a hub id'
    )
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--calib-data", help="CSV or text file of sentences (default: the shipped STS-B train split)")
    parser.add_argument(
        "--calib-samples",
        type=int,
        default=None,
        help="calibration sentences (default 256; fewer than 100 only when given explicitly)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed for drawing calibration sentences (default 42)")
    parser.add_argument("--max-seq-length", type=int, help="override the model's max sequence length")
    parser.add_argument("--mxq", action="store_true", help="also compile model.mxq with Mobilint's qbcompiler")
    parser.add_argument("--mblt", action="store_true", help="also write model.mblt, the qbcompiler analysis graph")
    parser.add_argument(
        "--npu-graph",
        choices=qb.NPU_GRAPHS,
        default="model",
        help="what --mxq/--mblt compile: the whole BertModel, Mobilint's recipe (default), or the encoder alone",
    )
    parser.add_argument(
        "--target-device",
        choices=qb.TARGET_DEVICES,
        default="aries-rb",
        help="the board the .mxq is for (default aries-rb); regulus-rb compiles with inference scheme single",
    )
    parser.add_argument(
        "--inference-scheme",
        choices=qb.INFERENCE_SCHEMES,
        help="NPU core modes the .mxq supports (qbcompiler's inference_scheme; left to the compiler when not given)",
    )
    parser.add_argument(
        "--compile-device",
        choices=qb.COMPILE_DEVICES,
        default="auto",
        help="where qbcompiler computes (its device=): auto = gpu when CUDA is available, else cpu",
    )
    parser.add_argument(
        "--pooling",
        choices=POOLING_MODES,
        help="override the model's pooling (default: its 1_Pooling config, else mean)",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help='add or replace one of the model\'s prompts, e.g. --prompt "query=query: " (repeatable)',
    )
    parser.add_argument("--int8", action="store_true", help="also write encoder.int8.onnx (int8 CPU encoder)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle in --out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 with a one-line message for a CompileError)."""
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("compile")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    _quiet_third_party_progress()
    started = time.perf_counter()
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds, so the staging folder is removed
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        out = build_bundle(
            args.model,
            args.out,
            calib_data=args.calib_data,
            calib_samples=args.calib_samples,
            seed=args.seed,
            max_seq_length=args.max_seq_length,
            mxq=args.mxq,
            mblt=args.mblt,
            npu_graph=args.npu_graph,
            target_device=args.target_device,
            inference_scheme=args.inference_scheme,
            compile_device=args.compile_device,
            pooling=args.pooling,
            prompts=_prompts(args.prompt),
            int8=args.int8,
            force=args.force,
        )
    except CompileError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever a library's text held
        return 2
    finally:
        logger.removeHandler(handler)
    print(f"{out} ({time.perf_counter() - started:.1f} s)")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _prompts(items: list[str]) -> dict[str, str]:
    """--prompt NAME=TEXT options as a dict; the text is kept exactly, spaces included."""
    prompts = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise SystemExit(f'error: --prompt {item!r}: expected NAME=TEXT, e.g. --prompt "query=query: "')
        prompts[name] = text
    return prompts


def _quiet_third_party_progress() -> None:
    """One log line per step: transformers' and the hub's progress bars would interleave with them."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()
