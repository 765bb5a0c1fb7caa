"""README.md stays a user's document: short, and free of run logs."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_is_short_and_has_no_run_logs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert re.findall(r"\b[0-9a-f]{7,40}\b", text) == []  # commit hashes
    assert re.findall(r"\b\d\d:\d\d(?:-\d\d:\d\d)? UTC\b", text) == []  # minutes of a run
