"""Run every benchmark in turn: `python -m benchmarks [--bundle DIR] [--threads 2] [--quick] [--out-dir DIR]`.

Results go to OUT_DIR/{accuracy,speed,npu_pipeline,serve,corpus,footprint}.json (+ speed.png).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from . import accuracy, corpus, footprint, npu_pipeline, serve, speed
from .common import DEFAULT_BUNDLE, DEFAULT_THREADS, RESULTS_DIR

BENCHMARKS = {
    "accuracy": accuracy,
    "speed": speed,
    "npu_pipeline": npu_pipeline,
    "serve": serve,
    "corpus": corpus,
    "footprint": footprint,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen benchmarks with the same bundle, model, threads and --quick."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument(
        "--model", default=None, help="sentence-transformers reference folder (default: the bundle's source model)"
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    shared = ["--bundle", str(args.bundle), "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    if args.model is not None:
        shared += ["--model", args.model]
    for name in args.only:
        print(f"\n=== {name} ===")
        BENCHMARKS[name].main(shared + ["--out", str(args.out_dir / f"{name}.json")])


if __name__ == "__main__":
    main()
