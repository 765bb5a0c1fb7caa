"""The qb Compiler's calibration set: sentences sampled with a fixed seed, each embedded alone on the
host exactly as the runtime does it, saved as one float32 [1, seq, hidden] .npy per sentence."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bertnpu_runtime.embedding import EmbeddingLayer
from bertnpu_runtime.tokenization import Tokenizer

from .data import STSB_TRAIN_FILE, default_stsb_dir, read_sentences
from .errors import CompileError

log = logging.getLogger(__name__)


def default_calib_data() -> Path:
    """The STS-B train split next to the repository (or under $BERTNPU_STSB_DIR)."""
    return default_stsb_dir() / STSB_TRAIN_FILE


def sample_sentences(path: Path, samples: int, seed: int) -> list[str]:
    """`samples` distinct sentences from `path` (CSV or text), drawn reproducibly with `seed`."""
    if samples < 1:
        raise CompileError(f"--calib-samples must be at least 1, found {samples}")
    if not path.is_file():
        hint = " (set BERTNPU_STSB_DIR or pass --calib-data)" if path == default_calib_data() else ""
        raise CompileError(f"{path}: calibration data file does not exist{hint}")
    sentences = list(dict.fromkeys(read_sentences(path)))  # STS-B repeats sentences across pairs
    if samples > len(sentences):
        log.warning("%s has only %d distinct sentences; using all of them, not %d", path, len(sentences), samples)
        samples = len(sentences)
    chosen = np.random.default_rng(seed).choice(len(sentences), size=samples, replace=False)
    return [sentences[i] for i in chosen]


def write_calibration(sentences: list[str], embedding: EmbeddingLayer, tokenizer: Tokenizer, calib_dir: Path) -> list[Path]:
    """Embed each sentence alone (unpadded) and save it as calib_dir/NNNN.npy, float32 [1, seq, hidden]."""
    calib_dir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(sentences) - 1)))
    paths = []
    for index, sentence in enumerate(tqdm(sentences, desc="calibration", unit="sentence", leave=False)):
        batch = tokenizer.encode([sentence])  # one sentence: no padding
        hidden = embedding(batch.input_ids)  # [1, seq, hidden]
        path = calib_dir / f"{index:0{width}d}.npy"
        np.save(path, np.ascontiguousarray(hidden, dtype=np.float32))
        paths.append(path)
    return paths
