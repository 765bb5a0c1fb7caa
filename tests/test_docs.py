"""README.md stays a user's document: short, and free of run logs."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_is_short_and_has_no_run_logs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert re.findall(r"\b[0-9a-f]{7,40}\b", text) == []  # commit hashes
    assert re.findall(r"\b\d\d:\d\d(?:-\d\d:\d\d)? UTC\b", text) == []  # minutes of a run


def test_relative_links_in_readme_and_docs_resolve():
    for document in [README, *sorted((README.parent / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text(encoding="utf-8")):
            assert (document.parent / target).exists(), f"{document.name} links to {target}, which does not exist"
