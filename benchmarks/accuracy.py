"""Accuracy: STS-B dev Spearman of every contender, and how close its vectors are to the reference.

    python -m benchmarks.accuracy [--bundle DIR] [--threads 2] [--quick] [--out FILE.json]

For each contender: Spearman's rank correlation between the cosine of each pair's two sentence
vectors and the gold score (x100 is the usual STS-B figure), its difference to the PyTorch
reference's, and the cosine between its vector and the reference's for every sentence (min, mean).
The int8 path is also compared with the float32 ONNX path, whose quantization it previews.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from .common import (
    BASELINE,
    ONNX,
    ONNX_INT8,
    base_parser,
    build_contenders,
    print_table,
    reference_model_folder,
    run_metadata,
    start_run,
    write_json,
)

BATCH_SIZE = 32


def rank_average_ties(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values`; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # rank of the first member of each tied group
    return (first_rank + (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties averaged), as scipy computes it."""
    ranks_a = rank_average_ties(np.asarray(a, dtype=np.float64))
    ranks_b = rank_average_ties(np.asarray(b, dtype=np.float64))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of a[i] and b[i] for every row i, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return base_parser(__doc__.splitlines()[0], "accuracy").parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Encode the STS-B dev sentences with every contender; print a table, write JSON, return it."""
    args = parse_args(argv)
    run = start_run(args)
    pairs = run.pairs
    sentences = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))  # each distinct sentence once
    index = {s: i for i, s in enumerate(sentences)}
    first = np.array([index[a] for a, _, _ in pairs])
    second = np.array([index[b] for _, b, _ in pairs])
    gold = np.array([score for _, _, score in pairs])

    contenders = build_contenders(run.bundle, reference_model_folder(run.bundle, args.model), args.threads)
    try:
        vectors = {c.name: np.asarray(c.encode(sentences, BATCH_SIZE), dtype=np.float32) for c in contenders}
    finally:
        contenders.close()

    rows = []
    for name, mine in vectors.items():
        row: dict[str, Any] = {"contender": name, "spearman": spearman(cosine_rows(mine[first], mine[second]), gold)}
        for other, prefix in ((BASELINE, "reference"), (ONNX, "onnx_float32")):
            if other in vectors and other != name and (other == BASELINE or name == ONNX_INT8):
                cosines = cosine_rows(mine, vectors[other])
                worst = int(np.argmin(cosines))
                row[f"cosine_to_{prefix}_min"] = float(cosines[worst])
                row[f"cosine_to_{prefix}_mean"] = float(cosines.mean())
                row[f"cosine_to_{prefix}_worst_sentence"] = sentences[worst]
        rows.append(row)
    reference = next((row["spearman"] for row in rows if row["contender"] == BASELINE), None)
    for row in rows:
        row["spearman_minus_reference"] = None if reference is None else row["spearman"] - reference

    print_table(
        f"STS-B dev: {len(pairs)} pairs, {len(sentences)} distinct sentences; Spearman of cosine vs gold score",
        rows,
        (
            "contender",
            "spearman",
            "spearman_minus_reference",
            "cosine_to_reference_min",
            "cosine_to_reference_mean",
            "cosine_to_onnx_float32_min",
            "cosine_to_onnx_float32_mean",
        ),
    )
    if contenders.skipped:
        print("not run: " + "; ".join(f"{name}: {why}" for name, why in contenders.skipped.items()))
    result = {
        "benchmark": "accuracy",
        "meta": run_metadata(args),
        "pairs": len(pairs),
        "sentences": len(sentences),
        "reference": BASELINE,
        "skipped": contenders.skipped,
        "rows": rows,
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
