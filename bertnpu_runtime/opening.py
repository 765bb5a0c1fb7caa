"""Opening a bundle as what it is: a SentenceEncoder for an embedding model, a CrossEncoder for a
reranker (bundle.json's "task"). For layers that serve whatever bundle they are given."""

from __future__ import annotations

from pathlib import Path

from .bundle import Bundle
from .cross_encoder import CrossEncoder
from .encoder import SentenceEncoder
from .options import BackendOptions


def open_model(bundle_dir: str | Path, options: BackendOptions) -> SentenceEncoder | CrossEncoder:
    """The bundle opened on the backend `options` names, as its task says."""
    task = Bundle(bundle_dir, verify=False).manifest.task  # bundle.json alone; the class verifies the files
    kind: type[SentenceEncoder] | type[CrossEncoder] = CrossEncoder if task == "rerank" else SentenceEncoder
    return kind.from_options(bundle_dir, options)
