"""Every error compile/ raises on purpose. Messages say what was expected, what was found, and where."""

from __future__ import annotations

from bertnpu_runtime.errors import BertNpuError


class CompileError(BertNpuError):
    """A bundle cannot be built: bad model, bad data, unwritable output, or a missing tool."""
