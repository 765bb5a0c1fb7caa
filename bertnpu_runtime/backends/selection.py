"""Choosing and opening an encoder backend for a bundle: "auto", "npu" or "onnx"."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from ..bundle import INT8_ENCODER_FILE, MXQ_FILE, ONNX_ENCODER_FILE, Bundle
from ..errors import BackendUnavailableError
from .base import EncoderBackend
from .onnx import check_num_threads

logger = logging.getLogger("bertnpu")

BACKENDS = ("auto", "npu", "onnx")
ENCODER_PRECISIONS = ("float32", "int8")


class OpenedBackend(NamedTuple):
    """An open encoder backend and, in one line, why it is the one that runs."""

    backend: EncoderBackend
    reason: str


def open_backend(
    bundle: Bundle,
    backend: str = "auto",
    *,
    encoder_precision: str = "float32",
    device_no: int = 0,
    npu_device_name: str | None = None,
    npu_core_mode: str = "single",
    npu_cores: int | Sequence[tuple[int, int]] | None = None,
    npu_group_sentences: bool | None = None,
    npu_trace_path: str | Path | None = None,
    num_threads: int | None = None,
    npu_timeout_s: float = 30.0,
    qbruntime_module: ModuleType | None = None,
) -> OpenedBackend:
    """Open the encoder backend the user asked for, and say why it runs.

    auto: the NPU when qbruntime is installed, a device is present and the bundle has a model.mxq;
    otherwise ONNX Runtime, and the reason is logged. encoder_precision applies to the ONNX backend only:
    "int8" loads encoder.int8.onnx, the CPU preview of the NPU's quantization (the NPU always runs
    the .mxq's own int8), so it is never chosen implicitly.
    """
    check_num_threads(num_threads)  # checked whichever backend runs, before any device is opened
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, found {backend!r}")
    if encoder_precision not in ENCODER_PRECISIONS:
        raise ValueError(f"encoder_precision must be one of {ENCODER_PRECISIONS}, found {encoder_precision!r}")
    if backend == "npu" and encoder_precision != "float32":
        raise ValueError(
            f"encoder_precision={encoder_precision!r} selects an ONNX graph for the CPU; the npu backend runs the .mxq's own "
            "quantization. Use backend='onnx' with encoder_precision='int8' to preview it on the CPU."
        )

    if backend != "onnx":  # "auto" or "npu": probe the NPU once
        reason = (
            _npu_unusable_reason(bundle, qbruntime_module)
            if encoder_precision == "float32"
            else (f"encoder_precision={encoder_precision!r} was asked for")
        )
        if reason is None:
            from .npu import NpuEncoder

            npu = NpuEncoder(
                bundle.path(MXQ_FILE),
                bundle.manifest.npu,
                bundle.manifest.hidden_size,
                device_no=device_no,
                device_name=npu_device_name,
                core_mode=npu_core_mode,
                cores=npu_cores,
                group_sentences=npu_group_sentences,
                trace_path=npu_trace_path,
                timeout_s=npu_timeout_s,
                qbruntime_module=qbruntime_module,
            )
            return OpenedBackend(npu, f"backend={backend!r}: the bundle has {MXQ_FILE} and qbruntime sees an NPU")
        if backend == "npu":
            raise BackendUnavailableError(f"backend='npu' cannot run: {reason}")
        logger.info("backend='auto' runs the encoder on ONNX Runtime (CPU): %s", reason)
        why = f"backend='auto' chose ONNX Runtime (CPU): {reason}"
    else:
        why = "backend='onnx' was asked for"

    from .onnx import OnnxEncoder

    model_file = INT8_ENCODER_FILE if encoder_precision == "int8" else ONNX_ENCODER_FILE
    return OpenedBackend(
        OnnxEncoder(bundle.path(model_file), num_threads=num_threads, hidden_size=bundle.manifest.hidden_size), why
    )


def _npu_unusable_reason(bundle: Bundle, qbruntime_module: ModuleType | None) -> str | None:
    """None when the NPU backend can run this bundle, else why not, in one line."""
    if not bundle.has(MXQ_FILE):
        return f"the bundle {bundle.directory} has no {MXQ_FILE} (build it with `python -m compile --mxq` where qbcompiler is installed)"
    from .npu_device import probe_npu

    return probe_npu(qbruntime_module)
