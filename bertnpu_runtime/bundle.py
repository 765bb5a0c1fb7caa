"""The bundle: the folder compile/ writes and the runtime loads. This module is the runtime's only
reader of it; compile/manifest.py writes it, `register_files` here only adds files to a built
bundle (the test double's placeholder .mxq), and both use the names defined here.

Layout (format version 1):
    bundle.json         manifest: model facts, pooling, eps, and a SHA-256 for every file below
    embeddings.npz      word/position/token-type tables + embedding LayerNorm (float32), eps
    tokenizer.json      Hugging Face `tokenizers` file
    encoder.onnx        encoder only: hidden_states [b, s, h] f32 + attention_mask [b, s] i64 -> last_hidden_state
    encoder.int8.onnx   optional: int8 (QDQ) encoder, same interface
    calib/NNNN.npy      calibration inputs for the qb Compiler: [1, seq, hidden] float32, unpadded
    model.mxq           optional: the encoder compiled for a Mobilint NPU
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .embedding import EmbeddingTables
from .errors import BundleError

FORMAT_NAME = "bertnpu-bundle"
FORMAT_VERSION = 1

MANIFEST_FILE = "bundle.json"
EMBEDDINGS_FILE = "embeddings.npz"
TOKENIZER_FILE = "tokenizer.json"
ONNX_ENCODER_FILE = "encoder.onnx"
INT8_ENCODER_FILE = "encoder.int8.onnx"
MXQ_FILE = "model.mxq"
CALIB_DIR = "calib"

# Keys inside embeddings.npz.
WORD_KEY = "word_embeddings"
POSITION_KEY = "position_embeddings"
TOKEN_TYPE_KEY = "token_type_embeddings"
LN_WEIGHT_KEY = "layer_norm_weight"
LN_BIAS_KEY = "layer_norm_bias"
LN_EPS_KEY = "layer_norm_eps"
EMBEDDING_KEYS = (WORD_KEY, POSITION_KEY, TOKEN_TYPE_KEY, LN_WEIGHT_KEY, LN_BIAS_KEY, LN_EPS_KEY)

# Names of the ONNX encoder's inputs and output.
ONNX_HIDDEN_INPUT = "hidden_states"
ONNX_MASK_INPUT = "attention_mask"
ONNX_OUTPUT = "last_hidden_state"


# The bias an "additive" NPU mask input carries for a padding token (see NpuSpec): large enough
# to zero the softmax weight, small enough to survive int8 quantization of the scores.
NPU_ADDITIVE_MASK_PAD = -10000.0


@dataclass(frozen=True)
class NpuSpec:
    """How the bundle's model.mxq expects its inputs.

    mask_input: None when the .mxq takes hidden states only (each sentence runs unpadded at its
    true length, the tutorial's way). Otherwise the .mxq has a second input, the padding mask,
    float32 of shape (H, W, C) = (1, seq, 1) per sentence (4-D (n, 1, seq, 1) for n sentences),
    with the same W as the hidden states (1, seq, hidden):
      "keep":     1.0 for a real token, 0.0 for padding;
      "additive": 0.0 for a real token, NPU_ADDITIVE_MASK_PAD (-10000.0) for padding, to be added
                  to the attention scores.
    """

    mask_input: str | None = None


@dataclass(frozen=True)
class Manifest:
    """bundle.json, parsed and checked."""

    source_model: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_seq_length: int
    pooling: str
    normalize: bool
    layer_norm_eps: float
    files: dict[str, str]  # relative path -> sha256 hex
    npu: NpuSpec = NpuSpec()
    int8: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def has(self, relative_path: str) -> bool:
        return relative_path in self.files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def register_files(directory: str | Path, names: list[str], npu: dict[str, Any] | None = None) -> None:
    """List files already in a built bundle in its bundle.json, with their SHA-256; `npu` replaces
    the manifest's "npu" section. The result is checked by reading it back."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    _read_manifest(path)  # a bundle.json this runtime reads, before it is changed
    data = json.loads(path.read_text(encoding="utf-8"))
    for name in names:
        data["files"][name] = {"sha256": sha256_of(directory / name)}
    if npu is not None:
        data["npu"] = npu
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _read_manifest(path)


class Bundle:
    """A bundle folder opened for reading. Files are checked against bundle.json before use."""

    def __init__(self, directory: str | Path, verify: bool = True) -> None:
        self.directory = Path(directory)
        self.verify = verify
        if not self.directory.is_dir():
            raise BundleError(self.directory, "bundle folder does not exist (build one with `python -m compile`)")
        self.manifest = _read_manifest(self.directory / MANIFEST_FILE)

    def path(self, relative_path: str) -> Path:
        """Absolute path of a bundle file, checked to exist, be listed in bundle.json, and match its hash."""
        full = self.directory / relative_path
        if relative_path not in self.manifest.files:
            raise BundleError(full, f"not listed in {MANIFEST_FILE}; this bundle was built without it")
        if not full.is_file():
            raise BundleError(full, f"file is missing (listed in {MANIFEST_FILE})")
        if self.verify:
            expected = self.manifest.files[relative_path]
            actual = sha256_of(full)
            if actual != expected:
                raise BundleError(
                    full,
                    f"SHA-256 {actual[:12]}… does not match {expected[:12]}… in {MANIFEST_FILE}: "
                    "the file is corrupt or from another bundle; rebuild with `python -m compile --force`",
                )
        return full

    def has(self, relative_path: str) -> bool:
        return self.manifest.has(relative_path) and (self.directory / relative_path).is_file()

    def load_embeddings(self) -> EmbeddingTables:
        return load_embedding_tables(self.path(EMBEDDINGS_FILE), self.manifest)


def load_embedding_tables(path: Path, manifest: Manifest | None = None) -> EmbeddingTables:
    """Read embeddings.npz, checking keys, dtypes and shapes (against the manifest when given)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in EMBEDDING_KEYS if k not in npz.files]
            if missing:
                raise BundleError(path, f"missing arrays {missing}; expected {list(EMBEDDING_KEYS)}")
            arrays = {k: npz[k] for k in EMBEDDING_KEYS}
    except BundleError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(path, f"cannot be read as a NumPy .npz archive ({exc})") from exc

    word = arrays[WORD_KEY]
    if word.ndim != 2:
        raise BundleError(path, f"{WORD_KEY} must be 2-D [vocab, hidden], found shape {word.shape}")
    hidden = word.shape[1]
    for key in (POSITION_KEY, TOKEN_TYPE_KEY):
        if arrays[key].ndim != 2 or arrays[key].shape[1] != hidden:
            raise BundleError(path, f"{key} must be [rows, {hidden}], found shape {arrays[key].shape}")
    for key in (LN_WEIGHT_KEY, LN_BIAS_KEY):
        if arrays[key].shape != (hidden,):
            raise BundleError(path, f"{key} must have shape ({hidden},), found {arrays[key].shape}")
    for key in EMBEDDING_KEYS[:-1]:
        if arrays[key].dtype != np.float32:
            raise BundleError(path, f"{key} must be float32, found {arrays[key].dtype}")
    if manifest is not None:
        if hidden != manifest.hidden_size:
            raise BundleError(path, f"hidden size {hidden} disagrees with {manifest.hidden_size} in {MANIFEST_FILE}")
        if word.shape[0] != manifest.vocab_size:
            raise BundleError(path, f"vocabulary of {word.shape[0]} rows disagrees with {manifest.vocab_size} in {MANIFEST_FILE}")
        if arrays[POSITION_KEY].shape[0] < manifest.max_seq_length:
            raise BundleError(
                path,
                f"{arrays[POSITION_KEY].shape[0]} position rows, fewer than max_seq_length "
                f"{manifest.max_seq_length} in {MANIFEST_FILE}",
            )
    return EmbeddingTables(
        word=word,
        position=arrays[POSITION_KEY],
        token_type=arrays[TOKEN_TYPE_KEY],
        layer_norm_weight=arrays[LN_WEIGHT_KEY],
        layer_norm_bias=arrays[LN_BIAS_KEY],
        layer_norm_eps=float(arrays[LN_EPS_KEY]),
    )


_REQUIRED_FIELDS = {
    "source_model": str,
    "hidden_size": int,
    "num_layers": int,
    "vocab_size": int,
    "max_seq_length": int,
    "pooling": str,
    "normalize": bool,
    "layer_norm_eps": float,
    "files": dict,
}


def _read_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise BundleError(path, "file is missing: this folder is not a bertnpu bundle (build one with `python -m compile`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise BundleError(path, f'expected a JSON object with "format": "{FORMAT_NAME}"')
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            path, f"format_version {data.get('format_version')!r} is not {FORMAT_VERSION}, the version this runtime reads"
        )
    for name, kind in _REQUIRED_FIELDS.items():
        value = data.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BundleError(path, f'field "{name}" must be {kind.__name__}, found {value!r}')
    files = {}
    for rel, entry in data["files"].items():
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError(path, f'files["{rel}"] needs a 64-hex "sha256", found {entry!r}')
        files[rel] = digest
    npu = data.get("npu") or {}
    mask_input = npu.get("mask_input")
    if mask_input not in (None, "keep", "additive"):
        raise BundleError(path, f'npu.mask_input must be null, "keep" or "additive", found {mask_input!r}')
    known = set(_REQUIRED_FIELDS) | {"format", "format_version", "npu", "int8"}
    return Manifest(
        source_model=data["source_model"],
        hidden_size=data["hidden_size"],
        num_layers=data["num_layers"],
        vocab_size=data["vocab_size"],
        max_seq_length=data["max_seq_length"],
        pooling=data["pooling"],
        normalize=data["normalize"],
        layer_norm_eps=float(data["layer_norm_eps"]),
        files=files,
        npu=NpuSpec(mask_input=mask_input),
        int8=data.get("int8"),
        extra={k: v for k, v in data.items() if k not in known},
    )
