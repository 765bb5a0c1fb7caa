"""Footprint: import time, time to the first vector, and peak memory, bertnpu against sentence-transformers.

    python -m benchmarks.footprint [--bundle DIR] [--threads 2] [--quick] [--out FILE.json]
    python -m benchmarks.footprint --large-vocab     # a 250k-vocabulary model (see large_vocab.py)

Every measurement is a fresh Python process that imports the runtime, loads the model, encodes
32 STS-B sentences and reports its timings, peak resident memory (VmHWM), whether torch was
imported and, for bertnpu, the embedding stage's arrays against the word table they come from.
Processes of the contenders alternate; medians over the repeats are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    BASELINE,
    ONNX,
    ONNX_INT8,
    base_parser,
    print_table,
    reference_model_folder,
    run_metadata,
    start_run,
    write_json,
)

# Run in a fresh interpreter: argv[1] is a JSON job {"kind", "target", "threads", "sentences"}.
_CHILD = r"""
import json, sys, time
start = time.perf_counter()
job = json.loads(sys.argv[1])
kind = job["kind"]
if kind == "python":
    load = lambda: None
elif kind == "sentence-transformers":
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(job["threads"])
    load = lambda: SentenceTransformer(job["target"], device="cpu")
else:
    from bertnpu_runtime import SentenceEncoder
    load = lambda: SentenceEncoder(job["target"], backend="onnx", encoder_precision=kind, num_threads=job["threads"])
imported = time.perf_counter()

def peak_rss_mib():
    # VmHWM starts afresh at exec; ru_maxrss would keep the parent's peak from before the fork.
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB

model = load()
loaded = time.perf_counter()
if model is not None:
    model.encode(job["sentences"], batch_size=32)
encoded = time.perf_counter()
stage = {}
if kind in ("float32", "int8"):  # the host embedding stage's arrays, against the word table's size
    import numpy as np
    embedding = model.pipeline.embedding
    stage_bytes = sum(a.nbytes for a in vars(embedding).values() if isinstance(a, np.ndarray))
    word_bytes = embedding.vocab_size * embedding.hidden_size * 4
    stage = {"embedding_stage_mib": stage_bytes / 2**20, "embedding_vs_word_table": stage_bytes / word_bytes}
print(json.dumps({**stage,
    "import_s": imported - start,
    "load_s": loaded - imported,
    "first_encode_s": encoded - loaded,
    "peak_rss_mib": peak_rss_mib(),
    "torch_imported": "torch" in sys.modules,
    "onnxruntime_imported": "onnxruntime" in sys.modules,
}))
"""

SENTENCES = 32


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0], "footprint")
    parser.add_argument(
        "--large-vocab",
        type=Path,
        nargs="?",
        const=Path("/tmp/bertnpu-bench-large-vocab"),
        help="measure a random 250k-vocabulary model instead, built once into this cache folder "
        "(default /tmp/bertnpu-bench-large-vocab)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure every contender in fresh processes; print a table, write JSON, return it."""
    from bertnpu_runtime.bundle import INT8_ENCODER_FILE, Bundle

    args = parse_args(argv)
    if args.large_vocab is not None:
        from .large_vocab import large_vocab_bundle

        args.model, args.bundle = large_vocab_bundle(args.large_vocab)
    run = start_run(args, quick_repeats=1, threads=False)  # the children pin their own threads
    bundle, repeats, sentences = run.bundle, run.repeats, run.sentences[:SENTENCES]
    jobs = {
        "python (interpreter only)": {"kind": "python", "target": ""},
        BASELINE: {"kind": "sentence-transformers", "target": str(reference_model_folder(bundle, args.model))},
        ONNX: {"kind": "float32", "target": str(bundle)},
    }
    if Bundle(bundle, verify=False).has(INT8_ENCODER_FILE):
        jobs[ONNX_INT8] = {"kind": "int8", "target": str(bundle)}

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
    names = list(jobs)
    for round_no in range(repeats):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(_run_child({**jobs[name], "threads": args.threads, "sentences": sentences}, args.threads))

    rows = []
    for name, measured in runs.items():
        row: dict[str, Any] = {"contender": name, "processes": len(measured)}
        for key in (
            "import_s",
            "load_s",
            "first_encode_s",
            "peak_rss_mib",
            "embedding_stage_mib",
            "embedding_vs_word_table",
        ):
            if key in measured[0]:
                row[key] = float(np.median([m[key] for m in measured]))
        row["ready_s"] = row["import_s"] + row["load_s"] + row["first_encode_s"]
        row["torch_imported"] = measured[0]["torch_imported"]
        rows.append(row)
    print_table(
        f"Fresh process: import, load the model, encode {len(sentences)} sentences (medians of {repeats})",
        rows,
        (
            "contender",
            "import_s",
            "load_s",
            "first_encode_s",
            "ready_s",
            "peak_rss_mib",
            "embedding_stage_mib",
            "embedding_vs_word_table",
            "torch_imported",
        ),
    )
    result = {"benchmark": "footprint", "meta": run_metadata(args), "sentences": len(sentences), "rows": rows}
    write_json(args.out, result)
    return result


def _run_child(job: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, from the repository root so bertnpu_runtime imports."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "RAYON_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(job)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=Path(__file__).resolve().parents[1],
    )
    if completed.returncode != 0:
        raise RuntimeError(f"footprint child for {job['kind']} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
