"""build_bundle: the compile steps in order, written into a temporary sibling folder that is renamed
into place only when every step succeeded, so a failed build never leaves a half bundle."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bertnpu_runtime.bundle import (
    CALIB_DIR,
    EMBEDDINGS_FILE,
    HEAD_FILE,
    INT8_ENCODER_FILE,
    MXQ_FILE,
    ONNX_ENCODER_FILE,
    TOKENIZER_FILE,
    load_embedding_tables,
)
from bertnpu_runtime.embedding import EmbeddingLayer
from bertnpu_runtime.pooling import POOLING_MODES
from bertnpu_runtime.tokenize import Tokenizer

from . import qb
from .calibration import default_calib_data, sample_sentences, write_calibration
from .embeddings_export import export_embeddings
from .errors import CompileError
from .manifest import write_manifest
from .onnx_export import export_encoder
from .source_model import SourceModel, load_source_model
from .tokenizer_export import export_tokenizer

log = logging.getLogger(__name__)

# The whole-model graph's example input, as in Mobilint's BERT tutorial.
EXAMPLE_SENTENCE = "Hello, my dog is cute"


def build_bundle(
    model: str,
    out_dir: str | Path,
    *,
    calib_data: str | Path | None = None,
    calib_samples: int | None = None,
    seed: int = 42,
    max_seq_length: int | None = None,
    mxq: bool = False,
    mblt: bool = False,
    npu_graph: str = "model",
    target_device: str = "aries-rb",
    inference_scheme: str | None = None,
    compile_device: str = "auto",
    pooling: str | None = None,
    prompts: dict[str, str] | None = None,
    int8: bool = False,
    force: bool = False,
) -> Path:
    """Build a bundle from `model` ("default", a local folder, or a hub id) into `out_dir`; return its path.

    Always writes embeddings.npz, tokenizer.json, encoder.onnx, calib/ and bundle.json. `int8` adds
    encoder.int8.onnx, `mxq` model.mxq and `mblt` model.mblt (both need Mobilint's qbcompiler; see
    qb.py for `npu_graph`, `target_device`, `inference_scheme` and `compile_device`).
    `calib_samples` sentences (default 256) are drawn from `calib_data` (default: the shipped STS-B
    train split); see calibration.sample_sentences for a file with fewer. An existing non-empty
    `out_dir` is replaced only with `force`. Raises CompileError on bad input, and before any work
    when qbcompiler is needed and missing; when only the qbcompiler steps fail, the bundle is still
    written without their files and the error says so.
    """
    out = Path(out_dir).expanduser().resolve()
    _check_out_dir(out, force)
    calib_path = Path(calib_data).expanduser() if calib_data is not None else default_calib_data()
    sentences = sample_sentences(calib_path, calib_samples, seed)  # bad data fails before the slow steps
    npu = qb.NpuCompileOptions(npu_graph, target_device, inference_scheme, compile_device)  # so does a bad option
    if pooling is not None and pooling not in POOLING_MODES:
        raise CompileError(f"--pooling {pooling!r}: expected one of {list(POOLING_MODES)}")
    if mxq or mblt:  # and a missing compiler, or one that lacks what the options need
        qb.check_compiler_api(qb.import_qbcompiler(), npu)
    source = load_source_model(model, max_seq_length)
    if pooling is not None or prompts:
        settings = source.settings
        source = replace(
            source,
            settings=replace(
                settings, pooling=pooling or settings.pooling, prompts={**settings.prompts, **(prompts or {})}
            ),
        )

    staging = _make_staging_dir(out)
    try:
        int8_info, qb_error = _write_files(source, staging, sentences, int8=int8, mxq=mxq, mblt=mblt, npu=npu)
        config = source.config
        write_manifest(
            staging,
            source_model=source.name,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            vocab_size=config.vocab_size,
            max_seq_length=source.settings.max_seq_length,
            pooling=source.settings.pooling,
            normalize=source.settings.normalize,
            layer_norm_eps=config.layer_norm_eps,
            int8=int8_info,
            npu=npu.manifest(source.model, source.family) if mxq and qb_error is None else None,
            model={
                "family": source.family,
                "position_offset": source.position_offset,
                "task": source.task,
                **(
                    {"head": {"num_labels": source.head.num_labels, "activation": source.head.activation}}
                    if source.head
                    else {}
                ),
            },
            retrieval={
                "prompts": source.settings.prompts,
                "default_prompt_name": source.settings.default_prompt_name,
                "include_prompt": source.settings.include_prompt,
                "similarity_fn_name": source.settings.similarity_fn_name,
            },
            extra=_informative_fields(source, calib_path, len(sentences), seed),
        )
        _log_wrote(staging, "bundle.json")
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundle ready: %s", out)
    if qb_error is not None:
        raise CompileError(
            f"{qb_error}. The rest of the bundle was written to {out} and is usable without the NPU "
            "(onnx backend); rerun with --force once qbcompiler works to add the NPU files"
        ) from qb_error
    return out


def _write_files(
    source: SourceModel,
    staging: Path,
    sentences: list[str],
    *,
    int8: bool,
    mxq: bool,
    mblt: bool,
    npu: qb.NpuCompileOptions,
) -> tuple[dict[str, Any] | None, CompileError | None]:
    """Every bundle file but the manifest. Returns the int8 step's info and a qbcompiler failure, if any."""
    export_tokenizer(source.folder, staging / TOKENIZER_FILE, source.config.vocab_size)
    _log_wrote(staging, TOKENIZER_FILE)
    export_embeddings(source.model, staging / EMBEDDINGS_FILE)
    _log_wrote(staging, EMBEDDINGS_FILE)
    if source.head is not None:
        np.savez(staging / HEAD_FILE, **source.head.arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle's bool
        _log_wrote(staging, HEAD_FILE)

    log.info("exporting the encoder to ONNX and checking it against torch")
    export_encoder(source.model, staging / ONNX_ENCODER_FILE)
    _log_wrote(staging, ONNX_ENCODER_FILE)

    # Calibration reads back the files just written, so it embeds exactly as the runtime will.
    max_seq_length = source.settings.max_seq_length
    rerank = source.head is not None
    embedding = EmbeddingLayer(
        load_embedding_tables(staging / EMBEDDINGS_FILE),
        max_seq_length,
        position_offset=source.position_offset,
        token_types=rerank,
    )
    tokenizer = Tokenizer(staging / TOKENIZER_FILE, max_seq_length)
    write_calibration(sentences, embedding, tokenizer, staging / CALIB_DIR, pairs=rerank)
    _log_wrote(staging, CALIB_DIR, f"{len(sentences)} sentences")

    int8_info = None
    if int8:
        from .int8 import quantize_encoder  # needs onnxruntime's quantization tools only when asked

        int8_info = quantize_encoder(staging / ONNX_ENCODER_FILE, staging / CALIB_DIR, staging / INT8_ENCODER_FILE)
        _log_wrote(staging, INT8_ENCODER_FILE)

    example_ids = tokenizer.encode([EXAMPLE_SENTENCE]).input_ids[0].tolist()
    steps = [(mblt, qb.MBLT_FILE, qb.compile_mblt), (mxq, MXQ_FILE, qb.compile_mxq)]
    for wanted, name, step in steps:
        if not wanted:
            continue
        try:
            step(source.model, staging / CALIB_DIR, staging / name, example_ids=example_ids, options=npu)
        except CompileError as exc:
            (staging / name).unlink(missing_ok=True)  # never hash a half-written compiler output
            return int8_info, exc
        _log_wrote(staging, name)
    return int8_info, None


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CompileError(f"{out}: output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CompileError(f"{out}: output folder exists and is not empty; pass --force to replace it")


def _make_staging_dir(out: Path) -> Path:
    """A fresh staging folder beside `out`, named with this process's id; those of earlier builds
    of `out` whose process is gone (killed before it could clean up) are removed first."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        staging.chmod(0o755)  # mkdtemp makes it owner-only; a bundle is meant to be shared and deployed
        return staging
    except OSError as exc:
        raise CompileError(f"{out}: cannot write the bundle there ({exc.strerror or exc})") from exc


def _remove_abandoned_staging(out: Path) -> None:
    """Remove .OUT.partial-PID-* folders whose build process no longer runs (and the unnamed ones of
    versions that did not record it); a concurrent build's folder stays."""
    for folder in out.parent.glob(f".{out.name}.partial-*"):
        owner = folder.name[len(f".{out.name}.partial-") :].split("-")[0]
        if owner.isdigit() and _process_runs(int(owner)):
            continue
        log.info("removing %s, left by a build that was killed", folder)
        shutil.rmtree(folder, ignore_errors=True)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; an existing `out` is moved aside first and deleted only afterwards."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    try:
        staging.rename(out)
    except OSError as exc:
        if old is not None:
            (old / out.name).rename(out)
        raise CompileError(f"{out}: cannot move the finished bundle into place ({exc.strerror or exc})") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _informative_fields(source: SourceModel, calib_path: Path, samples: int, seed: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "model_name": source.display_name,
        "source_folder": str(source.folder),
        "calibration": {"source": str(calib_path), "samples": samples, "seed": seed},
        "tools": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _log_wrote(staging: Path, name: str, detail: str = "") -> None:
    path = staging / name
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    log.info("wrote %s (%s%s)", name, _human(size), f", {detail}" if detail else "")


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
