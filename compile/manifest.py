"""Write bundle.json, the manifest the runtime's bertnpu_runtime.bundle reads. The only writer of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bertnpu_runtime.bundle import FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, sha256_of


def file_hashes(bundle_dir: Path) -> dict[str, dict[str, str]]:
    """{relative path: {"sha256": hex}} for every file under `bundle_dir` except the manifest."""
    return {
        path.relative_to(bundle_dir).as_posix(): {"sha256": sha256_of(path)}
        for path in sorted(bundle_dir.rglob("*"))
        if path.is_file() and path.relative_to(bundle_dir).as_posix() != MANIFEST_FILE
    }


def write_manifest(
    bundle_dir: Path,
    *,
    source_model: str,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    max_seq_length: int,
    pooling: str,
    normalize: bool,
    layer_norm_eps: float,
    int8: dict[str, Any] | None = None,
    npu: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    retrieval: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Hash every file already in `bundle_dir` and write bundle.json next to them. `extra` holds
    informative fields (calibration, tool versions, ...) that the runtime keeps but does not need.
    `npu` describes the compiled model.mxq (None: the bundle has none); `model` the family, its
    position offset, the task and a reranker's head; `retrieval` holds the sentence-transformers
    settings the runtime follows (prompts, include_prompt, similarity_fn_name)."""
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source_model": source_model,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "vocab_size": vocab_size,
        "max_seq_length": max_seq_length,
        "pooling": pooling,
        "normalize": normalize,
        "layer_norm_eps": float(layer_norm_eps),
        "npu": npu if npu is not None else {"mask_input": None},
        "files": file_hashes(bundle_dir),
    }
    manifest.update(model or {})
    manifest.update(retrieval or {})
    if int8 is not None:
        manifest["int8"] = int8
    for key, value in (extra or {}).items():
        manifest.setdefault(key, value)  # never let an informative field replace a contract field
    path = bundle_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
