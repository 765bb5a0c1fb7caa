"""Edits to a copy of a bundle, as a hostile or careless user would make them, with bundle.json's
hashes kept matching so that the check under test is the one that fires."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertnpu_runtime.bundle import EMBEDDINGS_FILE, MANIFEST_FILE, sha256_of


def rewrite_manifest(bundle: Path, **changes: object) -> dict:
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return data


def rehash(bundle: Path, relative_path: str) -> None:
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    data["files"][relative_path]["sha256"] = sha256_of(bundle / relative_path)
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))


def rewrite_tables(bundle: Path, drop: tuple[str, ...] = (), **changes: np.ndarray) -> None:
    """Rewrite embeddings.npz with some arrays replaced or dropped, and rehash it."""
    path = bundle / EMBEDDINGS_FILE
    with np.load(path) as npz:
        arrays = {key: value for key, value in npz.items() if key not in drop}
    arrays.update(changes)
    np.savez(path, **arrays)
    rehash(bundle, EMBEDDINGS_FILE)


def table(bundle: Path, key: str) -> np.ndarray:
    with np.load(bundle / EMBEDDINGS_FILE) as npz:
        return npz[key]
