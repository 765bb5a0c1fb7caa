"""The data bertnpu ships, and readers for it.

The STS Benchmark English train and dev splits (CSV, `sentence1,sentence2,score`, with their
LICENSE beside them) are package data: the compiler's default calibration set and the accuracy
benchmark's test set, found the same way in a checkout and in an installed wheel. Set
$BERTNPU_STSB_DIR to read another copy of the same two files.
"""

from __future__ import annotations

import csv
import os
from importlib.resources import files
from pathlib import Path

from ..errors import DataError

STSB_DIR_ENV = "BERTNPU_STSB_DIR"
STSB_TRAIN_FILE = "stsb-en-train.csv"
STSB_DEV_FILE = "stsb-en-dev.csv"


def shipped_stsb_dir() -> Path:
    """The STS-B folder installed with this package."""
    # A plain folder for every install pip makes (wheel, editable, checkout); zip imports are not supported.
    return Path(str(files(__name__) / "stsb"))


def stsb_dir() -> Path:
    """$BERTNPU_STSB_DIR when set, else the shipped copy."""
    override = os.environ.get(STSB_DIR_ENV)
    return Path(override) if override else shipped_stsb_dir()


def stsb_file(name: str) -> Path:
    """`STSB_TRAIN_FILE` or `STSB_DEV_FILE` in `stsb_dir()`."""
    return stsb_dir() / name


def read_stsb_pairs(path: str | Path) -> list[tuple[str, str, float]]:
    """Rows of an STS-B CSV without header: (sentence1, sentence2, score 0..5)."""
    path = Path(path)
    pairs = []
    for line_no, row in enumerate(_csv_rows(path), start=1):
        if len(row) != 3:
            raise DataError(path, f"line {line_no}: expected 3 columns (sentence1,sentence2,score), found {len(row)}")
        try:
            score = float(row[2])
        except ValueError:
            raise DataError(path, f"line {line_no}: score {row[2]!r} is not a number") from None
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
        raise DataError(path, "no sentences found")
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
    _check_is_file(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot be read as a UTF-8 CSV file ({exc})") from exc


def _read_text(path: Path) -> str:
    _check_is_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot be read as UTF-8 text ({exc})") from exc


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(path, "expected a file, found a folder")
    if not path.is_file():
        raise DataError(path, "file does not exist")
