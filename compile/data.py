"""Reading STS-B and plain sentence files. Shared by calibration, tests and benchmarks."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .errors import CompileError

STSB_DIR_ENV = "BERTNPU_STSB_DIR"
STSB_TRAIN_FILE = "stsb-en-train.csv"
STSB_DEV_FILE = "stsb-en-dev.csv"


def default_stsb_dir() -> Path:
    """$BERTNPU_STSB_DIR, else ../shared/data/stsb next to the repository."""
    override = os.environ.get(STSB_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb"


def read_stsb_pairs(path: str | Path) -> list[tuple[str, str, float]]:
    """Rows of an STS-B CSV without header: (sentence1, sentence2, score 0..5)."""
    path = Path(path)
    pairs = []
    for line_no, row in enumerate(_csv_rows(path), start=1):
        if len(row) != 3:
            raise CompileError(f"{path}:{line_no}: expected 3 columns (sentence1,sentence2,score), found {len(row)}")
        try:
            score = float(row[2])
        except ValueError:
            raise CompileError(f"{path}:{line_no}: score {row[2]!r} is not a number") from None
        pairs.append((row[0], row[1], score))
    return pairs


def read_sentences(path: str | Path) -> list[str]:
    """Sentences from a .csv (every text column of every row; a last numeric column is skipped)
    or from any other text file (one sentence per non-empty line)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        sentences = [cell for row in _csv_rows(path) for cell in _text_cells(row)]
    else:
        sentences = [line.strip() for line in _read_text(path).splitlines()]
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise CompileError(f"{path}: no sentences found")
    return sentences


def _text_cells(row: list[str]) -> list[str]:
    if row and _is_number(row[-1]):
        row = row[:-1]
    return [cell.strip() for cell in row]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_rows(path: Path) -> list[list[str]]:
    _check_exists(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CompileError(f"{path}: cannot be read as a UTF-8 CSV file ({exc})") from exc


def _read_text(path: Path) -> str:
    _check_exists(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompileError(f"{path}: cannot be read as UTF-8 text ({exc})") from exc


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise CompileError(f"{path}: file does not exist")
