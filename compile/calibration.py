"""The bundle's calib/ folder, written, listed, loaded and checked here only: the qb Compiler's
calibration set, sentences sampled with a fixed seed, each embedded alone on the host exactly as the
runtime does it, saved as one float32 [1, seq, hidden] .npy per sentence. The int8 step and the qb
Compiler step read it through this module."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from bertnpu_runtime.data import STSB_DIR_ENV, STSB_TRAIN_FILE, read_sentences, stsb_file
from bertnpu_runtime.embedding import EmbeddingLayer
from bertnpu_runtime.errors import DataError
from bertnpu_runtime.tokenize import Tokenizer

from .errors import CompileError

log = logging.getLogger(__name__)

DEFAULT_CALIB_SAMPLES = 256
# Mobilint's guides ask for at least this many calibration samples; fewer is allowed only when asked for.
RECOMMENDED_MIN_CALIB_SAMPLES = 100


def default_calib_data() -> Path:
    """The STS-B train split shipped with bertnpu (or the copy under $BERTNPU_STSB_DIR)."""
    return stsb_file(STSB_TRAIN_FILE)


def sample_sentences(path: Path, samples: int | None, seed: int) -> list[str]:
    """`samples` distinct sentences from `path` (CSV or text), drawn reproducibly with `seed`.

    `samples` None means DEFAULT_CALIB_SAMPLES. A file with fewer distinct sentences than asked
    for gives all of them, with a warning; fewer than RECOMMENDED_MIN_CALIB_SAMPLES is refused
    unless `samples` was given explicitly.
    """
    wanted = DEFAULT_CALIB_SAMPLES if samples is None else samples
    if wanted < 1:
        raise CompileError(f"--calib-samples must be at least 1, found {wanted}")
    try:
        sentences = list(dict.fromkeys(read_sentences(path)))  # STS-B repeats sentences across pairs
    except DataError as exc:
        hint = (
            f" (from ${STSB_DIR_ENV}; unset it to use the shipped copy)"
            if os.environ.get(STSB_DIR_ENV) and path == default_calib_data()
            else ""
        )
        raise CompileError(f"calibration data {exc}{hint}") from exc
    if len(sentences) < wanted:
        if samples is None and len(sentences) < RECOMMENDED_MIN_CALIB_SAMPLES:
            raise CompileError(
                f"{path}: {len(sentences)} distinct sentences, fewer than the {RECOMMENDED_MIN_CALIB_SAMPLES} the qb "
                f"Compiler recommends for calibration; give more data, or pass --calib-samples {len(sentences)} to "
                "use them anyway"
            )
        log.warning(
            "%s has %d distinct sentences, fewer than the %d asked for: the calibration set has %d",
            path,
            len(sentences),
            wanted,
            len(sentences),
        )
        wanted = len(sentences)
    chosen = np.random.default_rng(seed).choice(len(sentences), size=wanted, replace=False)
    return [sentences[i] for i in chosen]


def write_calibration(
    sentences: list[str], embedding: EmbeddingLayer, tokenizer: Tokenizer, calib_dir: Path, *, pairs: bool = False
) -> list[Path]:
    """Embed each sentence alone (unpadded) and save it as calib_dir/NNNN.npy, float32 [1, seq, hidden].
    With `pairs` (a reranker's input), each sentence is paired with the next (the last with the
    first), so the calibration set looks like what the encoder will see."""
    calib_dir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(sentences) - 1)))
    paths = []
    following = sentences[1:] + sentences[:1]
    for index, sentence in enumerate(sentences):
        if pairs:
            batch = tokenizer.encode_pairs([(sentence, following[index])]).padded()  # one pair: no padding
        else:
            batch = tokenizer.encode([sentence])  # one sentence: no padding
        hidden = embedding(batch.input_ids, token_type_ids=batch.token_type_ids)  # [1, seq, hidden]
        path = calib_dir / f"{index:0{width}d}.npy"
        np.save(path, np.ascontiguousarray(hidden, dtype=np.float32))
        paths.append(path)
    return paths


def calibration_files(calib_dir: Path) -> list[Path]:
    """The calibration inputs, sorted by name; raises CompileError naming the folder if there are none."""
    calib_dir = Path(calib_dir)
    if not calib_dir.is_dir():
        raise CompileError(f"{calib_dir}: calibration folder does not exist (expected NNNN.npy files)")
    files = sorted(calib_dir.glob("*.npy"))
    if not files:
        raise CompileError(
            f"{calib_dir}: calibration folder holds no .npy files (expected float32 [1, seq, hidden] arrays)"
        )
    return files


def load_calibration_sample(path: Path) -> np.ndarray:
    """One calibration input: float32 [1, seq, hidden]; raises CompileError naming the file otherwise."""
    try:
        sample = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CompileError(f"{path}: cannot be read as a .npy array ({exc})") from exc
    if sample.ndim != 3 or sample.shape[0] != 1 or sample.shape[1] == 0 or sample.dtype != np.float32:
        raise CompileError(f"{path}: expected float32 [1, seq, hidden], found {sample.dtype} {list(sample.shape)}")
    return sample


def checked_calibration_files(calib_dir: Path) -> list[Path]:
    """calibration_files, each loaded once to check it, so that a bad file is named before a
    compiler starts rather than deep inside it."""
    files = calibration_files(calib_dir)
    hidden_sizes: dict[int, Path] = {}
    for path in files:
        hidden_sizes.setdefault(load_calibration_sample(path).shape[2], path)
    if len(hidden_sizes) > 1:
        raise CompileError(f"calibration files disagree on the hidden size: {hidden_sizes}")
    return files
