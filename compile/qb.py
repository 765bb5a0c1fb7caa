"""Mobilint qb Compiler steps: the encoder compiled to model.mxq (and the optional .mblt analysis file).

The graph handed to qbcompiler is the encoder alone: hidden states [1, seq, hidden] in (seq dynamic),
last hidden state out, no mask input. The embedding runs on the host, and each sentence is run unpadded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from bertnpu_runtime.bundle import ONNX_HIDDEN_INPUT

from .calibration import checked_calibration_files, load_calibration_sample
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
            "install it from Mobilint's SDK (their qbcompiler Docker image) to build model.mxq / model.mblt"
        ) from exc
    return qbcompiler


def compile_mxq(bert: torch.nn.Module, calib_dir: Path, out_path: Path, target_device: str | None = None) -> None:
    """Quantize and compile `bert.encoder` to `out_path` with the calibration folder `calib_dir`.

    Releases with `CalibrationConfig` (qbcompiler >= 1.0) take the example input as a plain tensor
    plus `dynamic_axes`, and a target device with its inference scheme; older releases take
    `QuantizationConfig` and a `wrap_tensor` input whose sequence axis is marked dynamic.
    """
    qbcompiler = import_qbcompiler()
    kwargs: dict[str, Any] = {
        "model": EncoderOnly(bert.encoder).eval(),
        "save_path": str(out_path),
        "calib_data_path": str(calib_dir),
        "backend": "torch",
    }
    if hasattr(qbcompiler, "CalibrationConfig"):
        settings = QUANTIZATION_SETTINGS
        config = qbcompiler.CalibrationConfig
        kwargs["calibration_config"] = config(
            method=settings["quantization_method"],
            output=settings["quantization_output"],
            mode=settings["quantization_mode"],
            max_percentile=config.MaxPercentile(percentile=settings["percentile"], topk_ratio=settings["topk_ratio"]),
        )
        kwargs.update(_tensor_input(calib_dir))
        if target_device is not None:
            kwargs["target_device"] = target_device
            kwargs["inference_scheme"] = inference_scheme(target_device)
    elif hasattr(qbcompiler, "QuantizationConfig"):
        kwargs["quantization_config"] = qbcompiler.QuantizationConfig.from_kwargs(**QUANTIZATION_SETTINGS)
        kwargs["feed_dict"] = _wrapped_input(calib_dir)
        if target_device is not None:
            kwargs["target_device"] = target_device
    else:
        raise QbCompilerMissing(
            f"qbcompiler {getattr(qbcompiler, '__version__', '?')} has neither CalibrationConfig nor QuantizationConfig"
        )
    _call(qbcompiler, "mxq_compile", out_path, **kwargs)


def compile_mblt(bert: torch.nn.Module, calib_dir: Path, out_path: Path, target_device: str | None = None) -> None:
    """The seed's analysis step: the encoder as a .mblt graph (open it in Netron to see unsupported layers)."""
    qbcompiler = import_qbcompiler()
    kwargs: dict[str, Any] = {
        "model": EncoderOnly(bert.encoder).eval(),
        "mblt_save_path": str(out_path),
        "backend": "torch",
    }
    if hasattr(qbcompiler, "CalibrationConfig"):
        kwargs.update(_tensor_input(calib_dir))
        if target_device is not None:
            kwargs["target_device"] = target_device
    else:
        kwargs.update(feed_dict=_wrapped_input(calib_dir), cpu_offload=True)
    _call(qbcompiler, "mblt_compile", out_path, **kwargs)


def inference_scheme(target_device: str) -> str:
    """REGULUS runs only the single-core scheme; an ARIES .mxq can hold all of them."""
    if "regulus" in target_device:
        return "single"
    if "aries" in target_device:
        return "all"
    raise CompileError(f"--target-device {target_device!r}: expected an aries or regulus device name (e.g. aries-rb, regulus-rb)")


def _example(calib_dir: Path) -> torch.Tensor:
    return torch.from_numpy(load_calibration_sample(checked_calibration_files(calib_dir)[0]))  # [1, seq, hidden]


def _tensor_input(calib_dir: Path) -> dict[str, Any]:
    """The newer API's example input: a plain tensor, with the sequence axis declared dynamic."""
    return {"feed_dict": {ONNX_HIDDEN_INPUT: _example(calib_dir)}, "dynamic_axes": {ONNX_HIDDEN_INPUT: [1]}}


def _wrapped_input(calib_dir: Path) -> dict[str, Any]:
    """The older API's example input, wrapped the seed tutorial's way with the sequence axis marked dynamic."""
    try:
        from qbcompiler.model_dict.parser.backend.torch.util import wrap_tensor
    except ImportError as exc:
        raise QbCompilerMissing(f"qbcompiler has no torch backend wrap_tensor ({exc})") from exc
    wrapped = wrap_tensor(ONNX_HIDDEN_INPUT, _example(calib_dir))
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
