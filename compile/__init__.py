"""Offline compiler: turns a Sentence-BERT model into a bertnpu bundle (`python -m compile`).

from compile import build_bundle
build_bundle("default", "bundles/all-MiniLM-L6-v2", mxq=True)
"""

from __future__ import annotations

from .errors import CompileError
from .pipeline import build_bundle

__all__ = ["CompileError", "build_bundle"]
