"""A stand-in for Mobilint's `qbcompiler` (not on PyPI), built from the calls Mobilint publishes
(github mobilint/mblt-sdk-tutorial: compilation/bert/*.py including the newer compile_model.py,
mxq_compile.py, mblt_compile.py and compile_mxq_regulus.py, compilation/stt/compile_encoder.py,
compilation/_guides/00_about_compilation_pipeline.md, and the seed BERT tutorial).

Each function takes exactly the keywords those calls show, so a keyword they never pass is a
TypeError here as it can be on the real compiler. Arguments are checked the way the compiler would
need them (a torch module it can trace with the wrapped example inputs, a calibration folder of
.npy files, known schemes and devices), and the output file is written. Every call is recorded in
`calls`, and appended as JSON to the file named by $QBCOMPILER_STANDIN_LOG when it is set.

`CalibrationConfig` is the >= 1.0 API; `LEGACY` holds the older one (QuantizationConfig and the
seed tutorial's mxq_compile) for a test to install instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

__version__ = "1.0.0-standin"

INFERENCE_SCHEMES = ("single", "multi", "global4", "global8", "all")
# The target_device values Mobilint's files pass: the newer BERT recipe's two boards, and the
# whole-model REGULUS file's "regulus2".
TARGET_DEVICES = ("aries-rb", "regulus-rb", "regulus2")
calls: list[tuple[str, dict[str, Any]]] = []


class CalibrationConfig:
    """CalibrationConfig(method=, output=, mode=, max_percentile=MaxPercentile(...) or a dict)."""

    class MaxPercentile:
        def __init__(self, *, percentile: float, topk_ratio: float) -> None:
            self.percentile, self.topk_ratio = percentile, topk_ratio

    def __init__(self, *, method: int, output: int, mode: int, max_percentile: Any = None) -> None:
        if method not in (0, 1, 2, 3) or output not in (0, 1, 2) or mode not in (0, 1, 2):
            raise ValueError(f"unknown calibration codes method={method}, output={output}, mode={mode}")
        if isinstance(max_percentile, dict):
            max_percentile = CalibrationConfig.MaxPercentile(**max_percentile)
        self.method, self.output, self.mode, self.max_percentile = method, output, mode, max_percentile

    def settings(self) -> dict[str, Any]:
        return {
            "quantization_method": self.method,
            "quantization_output": self.output,
            "quantization_mode": self.mode,
            "percentile": self.max_percentile.percentile,
            "topk_ratio": self.max_percentile.topk_ratio,
        }


def mxq_compile(
    *,
    model: Any,
    calib_data_path: str,
    save_path: str,
    target_device: str | None = None,
    backend: str | None = None,
    feed_dict: dict[str, Any] | None = None,
    dynamic_axes: dict[str, list[int]] | None = None,
    calibration_config: CalibrationConfig | None = None,
    device: str | None = None,
    inference_scheme: str | None = None,
    save_subgraph_type: int | None = None,
    output_subgraph_path: str | None = None,
    image_channels: int | None = None,
    preprocessing_config: Any = None,
    uint8_input_config: Any = None,
) -> None:
    """The keywords of every mxq_compile call in Mobilint's tutorial repository."""
    _record("mxq_compile", locals())
    if device not in (None, "gpu", "cpu"):
        raise ValueError(f"device must be 'gpu' or 'cpu', found {device!r}")
    if inference_scheme not in (None, *INFERENCE_SCHEMES):
        raise ValueError(f"unknown inference_scheme {inference_scheme!r}")
    _check_target_device(target_device, inference_scheme)
    if calibration_config is not None and not isinstance(calibration_config, CalibrationConfig):
        raise TypeError(f"calibration_config must be a CalibrationConfig, found {type(calibration_config).__name__}")
    _check_torch_model(model, backend, feed_dict, dynamic_axes)
    _check_calibration(calib_data_path)
    Path(save_path).write_bytes(b"stand-in mxq\n")


def mblt_compile(
    *,
    model: Any,
    mblt_save_path: str,
    backend: str,
    target_device: str | None = None,
    feed_dict: dict[str, Any] | None = None,
    dynamic_axes: dict[str, list[int]] | None = None,
    cpu_offload: bool | None = None,
    target: str | None = None,
    device: str | None = None,
) -> None:
    """The keywords of the seed's, the STT script's and the newer BERT recipe's mblt_compile calls."""
    _record("mblt_compile", locals())
    _check_target_device(target_device, None)
    _check_torch_model(model, backend, feed_dict, dynamic_axes)
    Path(mblt_save_path).write_bytes(b"stand-in mblt\n")


class _LegacyQuantizationConfig:
    """The older API: QuantizationConfig.from_kwargs(quantization_method=, ...), as in the seed."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = settings

    @classmethod
    def from_kwargs(
        cls,
        *,
        quantization_method: int,
        quantization_output: int,
        quantization_mode: int,
        percentile: float,
        topk_ratio: float,
    ) -> _LegacyQuantizationConfig:
        return cls(
            {
                "quantization_method": quantization_method,
                "quantization_output": quantization_output,
                "quantization_mode": quantization_mode,
                "percentile": percentile,
                "topk_ratio": topk_ratio,
            }
        )

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)


def _legacy_mxq_compile(
    *,
    model: Any,
    save_path: str,
    calib_data_path: str,
    backend: str,
    feed_dict: dict[str, Any],
    quantization_config: Any,
) -> None:
    """The seed tutorial's mxq_compile call on a release before CalibrationConfig."""
    _record("mxq_compile", locals())
    if not isinstance(quantization_config, _LegacyQuantizationConfig):
        raise TypeError("quantization_config must come from QuantizationConfig.from_kwargs")
    _check_torch_model(model, backend, feed_dict, None)
    _check_calibration(calib_data_path)
    Path(save_path).write_bytes(b"stand-in mxq (legacy API)\n")


LEGACY = SimpleNamespace(QuantizationConfig=_LegacyQuantizationConfig, mxq_compile=_legacy_mxq_compile)


def _record(function: str, arguments: dict[str, Any]) -> None:
    kwargs = {k: v for k, v in arguments.items() if v is not None}
    calls.append((function, kwargs))
    log = os.environ.get("QBCOMPILER_STANDIN_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"function": function, "keywords": sorted(kwargs), "summary": _summary(kwargs)}) + "\n")


def _summary(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a subprocess test checks: plain values, and the wrapped inputs' names and dynamic axes."""
    out: dict[str, Any] = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}
    if "feed_dict" in kwargs:
        out["feed_dict"] = {
            name: {"dynamic": [d.dynamic for d in w.src_shape], "mask": w.attention_mask}
            if hasattr(w, "src_shape")
            else {"tensor": list(w.shape)}
            for name, w in kwargs["feed_dict"].items()
        }
    if "dynamic_axes" in kwargs:
        out["dynamic_axes"] = kwargs["dynamic_axes"]
    out["model"] = type(kwargs["model"]).__name__
    config = kwargs.get("calibration_config") or kwargs.get("quantization_config")
    if config is not None:
        out["settings"] = config.settings()
    return out


def _check_target_device(target_device: str | None, inference_scheme: str | None) -> None:
    if target_device not in (None, *TARGET_DEVICES):
        raise ValueError(f"unknown target_device {target_device!r}; Mobilint's calls pass one of {TARGET_DEVICES}")
    if target_device in ("regulus-rb", "regulus2") and inference_scheme not in (None, "single"):
        raise ValueError(f"REGULUS supports inference_scheme 'single' only, found {inference_scheme!r}")


def _check_torch_model(
    model: Any, backend: str | None, feed_dict: dict[str, Any] | None, dynamic_axes: dict[str, list[int]] | None
) -> None:
    """A torch module in eval mode that runs on the example inputs at two lengths. The inputs are
    wrap_tensor'ed with the sequence axis marked dynamic (the seed's form), or plain tensors with
    that axis named in dynamic_axes (the newer recipe's form); not a mix."""
    from .model_dict.parser.backend.torch.util import WrappedTensor

    if backend != "torch":
        raise ValueError(f"this stand-in compiles torch models only, found backend={backend!r}")
    if not isinstance(model, torch.nn.Module) or model.training:
        raise TypeError("model must be a torch.nn.Module in eval mode")
    if not feed_dict:
        raise TypeError("feed_dict must map input names to example inputs")
    if dynamic_axes is None:
        if not all(isinstance(w, WrappedTensor) for w in feed_dict.values()):
            raise TypeError("without dynamic_axes, feed_dict must map input names to wrap_tensor(name, tensor) objects")
        for name, wrapped in feed_dict.items():
            if wrapped.name != name or not wrapped.src_shape[1].dynamic:
                raise ValueError(f"feed_dict[{name!r}] must be wrap_tensor({name!r}, ...) with src_shape[1] dynamic")
        tensors = {name: w.tensor for name, w in feed_dict.items()}
    else:
        if not all(isinstance(t, torch.Tensor) for t in feed_dict.values()):
            raise TypeError("with dynamic_axes, feed_dict must map input names to plain torch tensors")
        if set(dynamic_axes) != set(feed_dict) or any(axes != [1] for axes in dynamic_axes.values()):
            raise ValueError(f"dynamic_axes must mark the sequence axis [1] of every input, found {dynamic_axes}")
        tensors = dict(feed_dict)
    with torch.no_grad():
        for extra in (0, 3):  # the sequence axis is dynamic: the graph must take another length too
            model(**{name: _lengthen(tensor, extra) for name, tensor in tensors.items()})


def _lengthen(tensor: torch.Tensor, extra: int) -> torch.Tensor:
    if extra == 0:
        return tensor
    pad = tensor[:, -1:].repeat_interleave(extra, dim=1)
    return torch.cat([tensor, pad], dim=1)


def _check_calibration(calib_data_path: str) -> None:
    """A folder of .npy embedding outputs [1, seq, hidden] float32 (or a .txt listing them)."""
    path = Path(calib_data_path)
    files = [Path(line) for line in path.read_text().split()] if path.suffix == ".txt" else sorted(path.glob("*.npy"))
    if not files:
        raise FileNotFoundError(f"no calibration .npy files in {path}")
    for file in files:
        array = np.load(file)
        if array.ndim != 3 or array.shape[0] != 1 or array.dtype != np.float32:
            raise ValueError(
                f"{file}: calibration input must be float32 [1, seq, hidden], found {array.dtype} {array.shape}"
            )
