"""Choosing and opening an encoder backend for a bundle: "auto", "npu" or "onnx"."""

from __future__ import annotations

import logging
from types import ModuleType
from typing import NamedTuple

from ..bundle import INT8_ENCODER_FILE, MXQ_FILE, ONNX_ENCODER_FILE, Bundle
from ..errors import BackendUnavailableError
from ..options import BackendOptions
from .base import EncoderBackend

logger = logging.getLogger("bertnpu")


class OpenedBackend(NamedTuple):
    """An open encoder backend and, in one line, why it is the one that runs."""

    backend: EncoderBackend
    reason: str


def open_backend(bundle: Bundle, options: BackendOptions) -> OpenedBackend:
    """Open the encoder backend `options.backend` names, and say why it runs.

    auto: the NPU when qbruntime is installed, a device is present and the bundle has a model.mxq;
    otherwise ONNX Runtime, and the reason is logged. The ONNX precision "int8" loads
    encoder.int8.onnx, the CPU preview of the NPU's quantization (the NPU always runs the .mxq's
    own int8), so "auto" with it always runs ONNX.
    """
    backend, npu_options, onnx_options = options.backend, options.npu, options.onnx
    if backend != "onnx":  # "auto" or "npu": probe the NPU once
        if onnx_options.precision == "float32":
            reason = _npu_unusable_reason(bundle, npu_options.qbruntime_module)
        else:
            reason = f"encoder_precision={onnx_options.precision!r} was asked for"
        if reason is None:
            from .npu import NpuEncoder

            npu = NpuEncoder(bundle.path(MXQ_FILE), bundle.manifest.npu, bundle.manifest.hidden_size, npu_options)
            return OpenedBackend(npu, f"backend={backend!r}: the bundle has {MXQ_FILE} and qbruntime sees an NPU")
        if backend == "npu":
            raise BackendUnavailableError(f"backend='npu' cannot run: {reason}")
        logger.info("backend='auto' runs the encoder on ONNX Runtime (CPU): %s", reason)
        why = f"backend='auto' chose ONNX Runtime (CPU): {reason}"
    else:
        why = "backend='onnx' was asked for"

    from .onnx import OnnxEncoder

    model_file = INT8_ENCODER_FILE if onnx_options.precision == "int8" else ONNX_ENCODER_FILE
    onnx = OnnxEncoder(
        bundle.path(model_file), num_threads=onnx_options.num_threads, hidden_size=bundle.manifest.hidden_size
    )
    return OpenedBackend(onnx, why)


def _npu_unusable_reason(bundle: Bundle, qbruntime_module: ModuleType | None) -> str | None:
    """None when the NPU backend can run this bundle, else why not, in one line."""
    if not bundle.has(MXQ_FILE):
        return f"the bundle {bundle.directory} has no {MXQ_FILE} (build it with `python -m compile --mxq` where qbcompiler is installed)"
    from .npu_device import probe_npu

    return probe_npu(qbruntime_module)
