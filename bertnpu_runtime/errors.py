"""Every error bertnpu raises on purpose. Messages say what was expected, what was found, and where."""

from __future__ import annotations


class BertNpuError(Exception):
    """Base class of all bertnpu errors."""


class BundleError(BertNpuError):
    """A bundle file is missing, corrupt, or disagrees with bundle.json. The message names the file."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BackendUnavailableError(BertNpuError):
    """The requested encoder backend cannot run here (no device, no .mxq, library not installed)."""
