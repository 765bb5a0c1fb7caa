"""The bundle: the folder compile/ writes and the runtime loads. This module is the runtime's only
reader of it; compile/manifest.py writes it, `register_files` here only adds files to a built
bundle (the test double's placeholder .mxq), and both use the names defined here.

Layout (format version 1):
    bundle.json         manifest: model facts, pooling, eps, and a SHA-256 for every file below
    embeddings.npz      word/position/token-type tables + embedding LayerNorm (float32), eps
    tokenizer.json      Hugging Face `tokenizers` file
    encoder.onnx        encoder only: hidden_states f32, packed [tokens, h] or padded [b, s, h] (encoder_graph.py),
                        + attention_mask [b, s] i64 -> last_hidden_state [b, s, h]
    encoder.int8.onnx   optional: int8 (QDQ) encoder, same interface
    calib/NNNN.npy      calibration inputs for the qb Compiler: [1, seq, hidden] float32, unpadded
    model.mxq           optional: the encoder compiled for a Mobilint NPU
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .embedding import EmbeddingTables
from .errors import BundleError
from .families import FAMILIES, TASKS
from .heads import HEAD_KEYS, ClassifierHead, check_head
from .pooling import POOLING_MODES
from .similarity import SIMILARITY_FUNCTIONS

FORMAT_NAME = "bertnpu-bundle"
FORMAT_VERSION = 1

MANIFEST_FILE = "bundle.json"
EMBEDDINGS_FILE = "embeddings.npz"
TOKENIZER_FILE = "tokenizer.json"
ONNX_ENCODER_FILE = "encoder.onnx"
INT8_ENCODER_FILE = "encoder.int8.onnx"
MXQ_FILE = "model.mxq"
HEAD_FILE = "head.npz"  # a rerank bundle's classification head (heads.py)
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


NPU_GRAPHS = ("model", "encoder")
NPU_MASK_INPUTS = (None, "keep", "additive", "auto")
NPU_INFERENCE_SCHEMES = ("single", "multi", "global4", "global8", "all")
# The boards an .mxq is compiled for (`--target-device`), as Mobilint's compiler and runtime name them.
NPU_TARGET_DEVICES = ("aries-rb", "regulus-rb")


@dataclass(frozen=True)
class NpuSpec:
    """How the bundle's model.mxq was compiled and expects its inputs (bundle.json's "npu").

    graph: "model" (the whole BertModel, Mobilint's first recipe), "encoder" (the encoder alone, their newer one),
    or None (not recorded: bundles written before compile recorded it, or no .mxq). Either way the
    .mxq takes the embedding output, float32 (H, W, C) = (1, seq, hidden) per sentence.
    mask_input: None when the .mxq takes hidden states only (each sentence runs unpadded at its
    true length). Otherwise a second input, the padding mask, float32 (1, seq, 1) per sentence
    (4-D (n, 1, seq, 1) for n sentences), with the same W as the hidden states:
      "keep":     1.0 for a real token, 0.0 for padding (the Hugging Face attention_mask);
      "additive": 0.0 for a real token, NPU_ADDITIVE_MASK_PAD (-10000.0) for padding, to be added
                  to the attention scores;
      "auto":     decided at launch from the .mxq: a second input is the "keep" mask that Mobilint's
                  recipe marks as the padding mask; a single input means no mask.
    inference_scheme: the core modes it was compiled for (None: the compiler's default).
    target_device: the board it was compiled for, "aries-rb" or "regulus-rb"; the runtime opens
    that board by name. None in bundles written before compile recorded it (any card is tried).
    """

    mask_input: str | None = None
    graph: str | None = None
    inference_scheme: str | None = None
    target_device: str | None = None
    run_on_a_card: bool | None = None  # whether this family's graph has run on a card (families.RUN_ON_A_CARD)


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
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    include_prompt: bool = True
    similarity_fn_name: str = "cosine"
    family: str = "bert"  # see families.py
    position_offset: int = 0  # the position id of a sentence's first token
    task: str = "embed"  # "embed" (pooling) or "rerank" (a classification head; see heads.py)
    head: dict[str, Any] | None = None  # a rerank bundle's head: num_labels, activation
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

    def load_head(self) -> ClassifierHead:
        """A rerank bundle's head.npz, checked against bundle.json's hidden size and head."""
        path = self.path(HEAD_FILE)
        hidden, labels = self.manifest.hidden_size, (self.manifest.head or {}).get("num_labels")
        expected = {
            "dense_weight": (hidden, hidden),
            "dense_bias": (hidden,),
            "out_weight": (labels, hidden),
            "out_bias": (labels,),
        }
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in HEAD_KEYS if key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise BundleError(path, f"cannot be read as a NumPy .npz archive ({exc})") from exc
        for key, shape in expected.items():
            array = arrays.get(key)
            if array is None or array.shape != shape or array.dtype != np.float32:
                found = "nothing" if array is None else f"{array.dtype} {array.shape}"
                raise BundleError(path, f"{key} must be float32 {shape}, found {found}")
            if not np.isfinite(array).all():
                raise BundleError(path, f"{key} holds NaN or infinite values")
        return ClassifierHead(**arrays)


def load_embedding_tables(path: Path, manifest: Manifest | None = None) -> EmbeddingTables:
    """Read embeddings.npz, checking keys, dtypes and shapes (against the manifest when given)
    from the arrays' headers before any table is read, and its eps against the manifest's."""
    headers = _npz_headers(path)
    missing = [k for k in EMBEDDING_KEYS if k not in headers]
    if missing:
        raise BundleError(path, f"missing arrays {missing}; expected {list(EMBEDDING_KEYS)}")
    _check_table_headers(path, headers, manifest)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in EMBEDDING_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(path, f"cannot be read as a NumPy .npz archive ({exc})") from exc
    for key in EMBEDDING_KEYS[:-1]:  # the tables; eps is checked on its own below
        if not np.isfinite(arrays[key]).all():
            raise BundleError(path, f"{key} holds NaN or infinite values: the model's weights are broken")
    eps = float(arrays[LN_EPS_KEY])
    if not 0 < eps < 1:
        raise BundleError(path, f"{LN_EPS_KEY} must be a positive number below 1, found {eps!r}")
    if manifest is not None and not math.isclose(eps, manifest.layer_norm_eps, rel_tol=1e-6):
        raise BundleError(
            path, f"{LN_EPS_KEY} {eps!r} disagrees with layer_norm_eps {manifest.layer_norm_eps!r} in {MANIFEST_FILE}"
        )
    return EmbeddingTables(
        word=arrays[WORD_KEY],
        position=arrays[POSITION_KEY],
        token_type=arrays[TOKEN_TYPE_KEY],
        layer_norm_weight=arrays[LN_WEIGHT_KEY],
        layer_norm_bias=arrays[LN_BIAS_KEY],
        layer_norm_eps=eps,
    )


# A deflated member cannot expand more than this (deflate's limit is 1032:1).
_MAX_DEFLATE_RATIO = 1100


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of every array in an .npz, from the headers alone, each checked to fit in
    the bytes the archive holds for it: a header cannot make the reader allocate more than the file has."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f"{info.filename} has .npy format version {version}, not 1.0 or 2.0")
                name = info.filename[: -len(".npy")]
                declared = math.prod(shape) * dtype.itemsize
                stored = (
                    info.file_size
                    if info.compress_type == zipfile.ZIP_STORED
                    else info.compress_size * _MAX_DEFLATE_RATIO
                )
                if declared > min(info.file_size, stored) or info.compress_size > path.stat().st_size:
                    raise BundleError(
                        path, f"{name} declares shape {shape} ({declared} bytes), more than the archive holds for it"
                    )
                headers[name] = (tuple(shape), dtype)
    except BundleError:
        raise
    except zipfile.BadZipFile as exc:
        raise BundleError(path, f"cannot be read as a NumPy .npz archive, a zip of .npy files ({exc})") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise BundleError(path, f"cannot be read as a NumPy .npz archive ({exc})") from exc
    return headers


def _check_table_headers(
    path: Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]], manifest: Manifest | None
) -> None:
    shapes = {key: shape for key, (shape, _) in headers.items()}
    word = shapes[WORD_KEY]
    if len(word) != 2:
        raise BundleError(path, f"{WORD_KEY} must be 2-D [vocab, hidden], found shape {word}")
    hidden = word[1]
    for key in (POSITION_KEY, TOKEN_TYPE_KEY):
        if len(shapes[key]) != 2 or shapes[key][1] != hidden:
            raise BundleError(path, f"{key} must be [rows, {hidden}], found shape {shapes[key]}")
    for key in (LN_WEIGHT_KEY, LN_BIAS_KEY):
        if shapes[key] != (hidden,):
            raise BundleError(path, f"{key} must have shape ({hidden},), found {shapes[key]}")
    for key in EMBEDDING_KEYS[:-1]:
        if headers[key][1] != np.float32:
            raise BundleError(path, f"{key} must be float32, found {headers[key][1]}")
    eps_shape, eps_dtype = headers[LN_EPS_KEY]
    if eps_shape != () or eps_dtype.kind != "f":
        raise BundleError(path, f"{LN_EPS_KEY} must be one float (shape ()), found {eps_dtype} {eps_shape}")
    if manifest is not None:
        if hidden != manifest.hidden_size:
            raise BundleError(path, f"hidden size {hidden} disagrees with {manifest.hidden_size} in {MANIFEST_FILE}")
        if word[0] != manifest.vocab_size:
            raise BundleError(
                path, f"vocabulary of {word[0]} rows disagrees with {manifest.vocab_size} in {MANIFEST_FILE}"
            )
        if shapes[POSITION_KEY][0] < manifest.position_offset + manifest.max_seq_length:
            raise BundleError(
                path,
                f"{shapes[POSITION_KEY][0]} position rows, fewer than position_offset + max_seq_length "
                f"{manifest.max_seq_length} in {MANIFEST_FILE}",
            )


def _integer_between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f"must be an integer, found {value!r}"
        return None if low <= value <= high else f"must be between {low} and {high}, found {value}"

    return check


def _of_type(kind: type) -> Callable[[Any], str | None]:
    return lambda value: None if type(value) is kind else f"must be {kind.__name__}, found {value!r:.60}"


def _check_pooling(value: Any) -> str | None:
    return None if value in POOLING_MODES else f"must be one of {list(POOLING_MODES)}, found {value!r:.60}"


def _check_eps(value: Any) -> str | None:
    if type(value) not in (int, float):
        return f"must be a number, found {value!r:.60}"
    return None if 0 < value < 1 else f"must be a positive number below 1, found {value!r}"


def _check_optional_object(value: Any) -> str | None:
    return None if value is None or type(value) is dict else f"must be a JSON object or null, found {value!r:.60}"


# Bounds that no BERT comes near; they keep a corrupt manifest from asking for absurd tables.
MAX_SEQ_LENGTH_LIMIT = 1 << 16
HIDDEN_SIZE_LIMIT = 1 << 14
VOCAB_SIZE_LIMIT = 1 << 22

# bundle.json's schema: each field and the check of its value (None = fine, else what is wrong).
_MANIFEST_SCHEMA: dict[str, Callable[[Any], str | None]] = {
    "source_model": _of_type(str),
    "hidden_size": _integer_between(1, HIDDEN_SIZE_LIMIT),
    "num_layers": _integer_between(1, 1024),
    "vocab_size": _integer_between(1, VOCAB_SIZE_LIMIT),
    "max_seq_length": _integer_between(2, MAX_SEQ_LENGTH_LIMIT),  # [CLS] and [SEP] take two tokens
    "pooling": _check_pooling,
    "normalize": _of_type(bool),
    "layer_norm_eps": _check_eps,
    "files": _of_type(dict),
}
_OPTIONAL_SECTIONS = ("npu", "int8")
_HEX = re.compile(r"[0-9a-f]{64}")


def _check_prompts(value: Any) -> str | None:
    if type(value) is not dict or not all(type(k) is str and type(v) is str for k, v in value.items()):
        return f"must map prompt names to prompt texts, found {value!r:.60}"
    return None


# Optional fields (sentence-transformers settings; bundles from before they were recorded lack them).
_OPTIONAL_FIELDS: dict[str, tuple[Any, Callable[[Any], str | None]]] = {
    "prompts": ({}, _check_prompts),
    "default_prompt_name": (
        None,
        lambda v: None if v is None or type(v) is str else f"must be a string or null, found {v!r:.60}",
    ),
    "include_prompt": (True, _of_type(bool)),
    "family": ("bert", lambda v: None if v in FAMILIES else f"must be one of {list(FAMILIES)}, found {v!r:.60}"),
    "position_offset": (0, _integer_between(0, MAX_SEQ_LENGTH_LIMIT)),
    "task": ("embed", lambda v: None if v in TASKS else f"must be one of {list(TASKS)}, found {v!r:.60}"),
    "head": (None, _check_optional_object),
    "similarity_fn_name": (
        "cosine",
        lambda v: (
            None if v in SIMILARITY_FUNCTIONS else f"must be one of {list(SIMILARITY_FUNCTIONS)}, found {v!r:.60}"
        ),
    ),
}


def _read_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise BundleError(
            path, "file is missing: this folder is not a bertnpu bundle (build one with `python -m compile`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise BundleError(path, "is nested too deeply to be a bundle manifest") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise BundleError(path, f'expected a JSON object with "format": "{FORMAT_NAME}"')
    version = data.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # true and 1.0 compare equal to 1
        raise BundleError(path, f"format_version {version!r} is not {FORMAT_VERSION}, the version this runtime reads")
    for name, check in _MANIFEST_SCHEMA.items():
        if name not in data:
            raise BundleError(path, f'field "{name}" is missing')
        problem = check(data[name])
        if problem is not None:
            raise BundleError(path, f'field "{name}" {problem}')
    for name in _OPTIONAL_SECTIONS:
        problem = _check_optional_object(data.get(name))
        if problem is not None:
            raise BundleError(path, f'field "{name}" {problem}')
    optional = {}
    for name, (default, check) in _OPTIONAL_FIELDS.items():
        optional[name] = data.get(name, default)
        problem = check(optional[name])
        if problem is not None:
            raise BundleError(path, f'field "{name}" {problem}')
    if (optional["task"] == "rerank") != (optional["head"] is not None):
        raise BundleError(path, 'field "head" is needed exactly when "task" is "rerank"')
    if optional["head"] is not None and (problem := check_head(optional["head"])) is not None:
        raise BundleError(path, f'field "head" {problem}')
    if optional["default_prompt_name"] is not None and optional["default_prompt_name"] not in optional["prompts"]:
        raise BundleError(
            path, f'field "default_prompt_name" {optional["default_prompt_name"]!r} is not among the prompts'
        )
    files = {}
    for rel, entry in data["files"].items():
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or len(digest) != 64 or not _HEX.fullmatch(digest):
            raise BundleError(path, f'files["{rel}"] needs a "sha256" of 64 hex digits, found {entry!r:.80}')
        relative = PurePosixPath(rel)
        if relative.is_absolute() or ".." in relative.parts or "\\" in rel or not rel:
            raise BundleError(path, f'files["{rel:.80}"] must be a path inside the bundle folder')
        files[rel] = digest
    npu = _read_npu_section(path, data.get("npu") or {})
    known = set(_MANIFEST_SCHEMA) | {"format", "format_version", *_OPTIONAL_SECTIONS, *_OPTIONAL_FIELDS}
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
        npu=npu,
        int8=data.get("int8"),
        **optional,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _read_npu_section(path: Path, npu: dict[str, Any]) -> NpuSpec:
    for name, allowed in (
        ("mask_input", NPU_MASK_INPUTS),
        ("graph", (None, *NPU_GRAPHS)),
        ("inference_scheme", (None, *NPU_INFERENCE_SCHEMES)),
        ("target_device", (None, *NPU_TARGET_DEVICES)),
    ):
        if npu.get(name) not in allowed:
            shown = ", ".join("null" if a is None else f'"{a}"' for a in allowed)
            raise BundleError(path, f"npu.{name} must be one of {shown}, found {npu.get(name)!r:.60}")
    return NpuSpec(
        mask_input=npu.get("mask_input"),
        graph=npu.get("graph"),
        inference_scheme=npu.get("inference_scheme"),
        target_device=npu.get("target_device"),
        run_on_a_card=npu.get("run_on_a_card") if isinstance(npu.get("run_on_a_card"), bool) else None,
    )
