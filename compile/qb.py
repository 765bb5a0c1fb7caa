"""Mobilint qb Compiler steps: the encoder compiled to model.mxq (and the optional .mblt analysis file).

The graph handed to qbcompiler is the encoder alone: hidden states [1, seq, hidden] in (seq dynamic),
last hidden state out, no mask input. The embedding runs on the host, and each sentence is run unpadded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from bertnpu_runtime.bundle import ONNX_HIDDEN_INPUT

from .errors import CompileError

log = logging.getLogger(__name__)

MBLT_FILE = "model.mblt"
# The seed tutorial's settings: per-channel weights, layer-wise output, max-percentile 0.999, top-k 0.01.
QUANTIZATION_SETTINGS = {
    "quantization_method": 1,  # 0 per tensor, 1 per channel
    "quantization_output": 0,  # 0 layer, 1 channel
    "quantization_mode": 1,  # max percentile
    "percentile": 0.999,
    "topk_ratio": 0.01,
}


class QbCompilerMissing(CompileError):
    """qbcompiler cannot be imported here; the message says what to install."""


class EncoderOnly(torch.nn.Module):
    """BertEncoder as a plain tensor function: hidden_states [1, seq, hidden] -> last hidden state."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.encoder(hidden_states).last_hidden_state


def import_qbcompiler() -> ModuleType:
    """The qbcompiler module, or QbCompilerMissing saying what is missing."""
    try:
        import qbcompiler
    except ImportError as exc:
        raise QbCompilerMissing(
            f"the Mobilint qb Compiler (Python package `qbcompiler`) is not importable here ({exc}); "
            "install it from Mobilint's SDK to build model.mxq / model.mblt"
        ) from exc
    return qbcompiler


def compile_mxq(bert: torch.nn.Module, calib_dir: Path, out_path: Path, target_device: str | None = None) -> None:
    """Quantize and compile `bert.encoder` to `out_path` with the calibration folder `calib_dir`."""
    qbcompiler = import_qbcompiler()
    kwargs: dict[str, Any] = {
        "model": EncoderOnly(bert.encoder).eval(),
        "save_path": str(out_path),
        "calib_data_path": str(calib_dir),
        "backend": "torch",
        "feed_dict": _feed_dict(calib_dir),
    }
    kwargs.update(_quantization_kwargs(qbcompiler))
    if target_device is not None:
        kwargs["target_device"] = target_device
    _call(qbcompiler, "mxq_compile", out_path, **kwargs)


def compile_mblt(bert: torch.nn.Module, calib_dir: Path, out_path: Path) -> None:
    """The seed's analysis step: the encoder as a .mblt graph (open it in Netron to see unsupported layers)."""
    qbcompiler = import_qbcompiler()
    _call(
        qbcompiler,
        "mblt_compile",
        out_path,
        model=EncoderOnly(bert.encoder).eval(),
        mblt_save_path=str(out_path),
        backend="torch",
        feed_dict=_feed_dict(calib_dir),
        cpu_offload=True,
    )


def _quantization_kwargs(qbcompiler: ModuleType) -> dict[str, Any]:
    # Newer releases call the settings object CalibrationConfig; older ones QuantizationConfig.
    if hasattr(qbcompiler, "CalibrationConfig"):
        return {"calibration_config": qbcompiler.CalibrationConfig.from_kwargs(**QUANTIZATION_SETTINGS)}
    if hasattr(qbcompiler, "QuantizationConfig"):
        return {"quantization_config": qbcompiler.QuantizationConfig.from_kwargs(**QUANTIZATION_SETTINGS)}
    raise QbCompilerMissing(
        f"qbcompiler {getattr(qbcompiler, '__version__', '?')} has neither CalibrationConfig nor QuantizationConfig"
    )


def _feed_dict(calib_dir: Path) -> dict[str, Any]:
    """The example input, wrapped the tutorial's way with the sequence axis marked dynamic."""
    try:
        from qbcompiler.model_dict.parser.backend.torch.util import wrap_tensor
    except ImportError as exc:
        raise QbCompilerMissing(f"qbcompiler has no torch backend wrap_tensor ({exc})") from exc
    example = torch.from_numpy(np.load(min(calib_dir.glob("*.npy"))))  # [1, seq, hidden]
    wrapped = wrap_tensor(ONNX_HIDDEN_INPUT, example)
    wrapped.src_shape[1].set_dynamic()
    return {ONNX_HIDDEN_INPUT: wrapped}


def _call(qbcompiler: ModuleType, function: str, out_path: Path, **kwargs: Any) -> None:
    if not hasattr(qbcompiler, function):
        raise QbCompilerMissing(f"qbcompiler {getattr(qbcompiler, '__version__', '?')} has no {function}()")
    log.info("running qbcompiler.%s (this can take minutes)", function)
    try:
        getattr(qbcompiler, function)(**kwargs)
    except Exception as exc:  # the compiler raises its own assorted types
        raise CompileError(f"{out_path}: qbcompiler.{function} failed ({type(exc).__name__}: {exc})") from exc
    if not out_path.is_file():
        raise CompileError(f"{out_path}: qbcompiler.{function} returned but wrote no file")
