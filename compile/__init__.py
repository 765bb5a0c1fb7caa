"""Offline compiler: turns a Sentence-BERT model into a bertnpu bundle (`python -m compile`).

    from compile import build_bundle
    build_bundle("default", "bundles/all-MiniLM-L6-v2", mxq=True)
"""

from __future__ import annotations

from typing import Any

from .errors import CompileError

__all__ = ["build_bundle", "CompileError"]


def __getattr__(name: str) -> Any:
    # build_bundle brings torch and transformers (seconds to import); compile.data, which tests and
    # benchmarks use to read STS-B, must not.
    if name == "build_bundle":
        from .pipeline import build_bundle

        return build_bundle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
