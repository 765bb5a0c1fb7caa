"""Mobilint qb Compiler steps: model.mxq (and the optional .mblt analysis graph), called exactly as
Mobilint's own BERT scripts call the compiler.

Two graphs can be compiled (`--npu-graph`):
- "model" (default, Mobilint's recipe from their BERT tutorial): the whole `BertModel`, its example
  inputs `input_ids`, `token_type_ids` and `attention_mask` each wrapped with `wrap_tensor` and the
  sequence axis marked dynamic, `attention_mask` marked as the padding mask. The compiler cuts off
  the embedding layers (the host computes them); the .mxq takes the embedding output. Whether it
  also takes the padding mask as an input is read from the .mxq at run time.
- "encoder" (bertnpu's own design): `BertModel.encoder` alone, hidden states in, no mask input.

Only keywords that appear in Mobilint's published calls are passed: `mxq_compile(model=,
save_path=, calib_data_path=, backend="torch", feed_dict=, calibration_config=)` with `device=`
and, when asked for, `inference_scheme=` (qbcompiler >= 1.0); `quantization_config=` instead of
`calibration_config=` on older releases, with the seed tutorial's keywords only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from bertnpu_runtime import bundle
from bertnpu_runtime.bundle import ONNX_HIDDEN_INPUT

from .calibration import checked_calibration_files, load_calibration_sample
from .errors import CompileError

log = logging.getLogger(__name__)

MBLT_FILE = "model.mblt"
NPU_GRAPHS = bundle.NPU_GRAPHS
INFERENCE_SCHEMES = bundle.NPU_INFERENCE_SCHEMES
COMPILE_DEVICES = ("auto", "gpu", "cpu")
# The BERT inputs Mobilint's recipe wraps, in the tokenizer's order.
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
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


def check_options(graph: str, inference_scheme: str | None, compile_device: str) -> None:
    """Refuse an unknown --npu-graph, --inference-scheme or --compile-device before any work."""
    for flag, value, allowed in (
        ("--npu-graph", graph, NPU_GRAPHS),
        ("--inference-scheme", inference_scheme, (None, *INFERENCE_SCHEMES)),
        ("--compile-device", compile_device, COMPILE_DEVICES),
    ):
        if value not in allowed:
            raise CompileError(f"{flag} {value!r}: expected one of {[a for a in allowed if a is not None]}")


def check_compiler_api(qbcompiler: ModuleType, inference_scheme: str | None, compile_device: str) -> None:
    """Refuse, before any work, options that this qbcompiler's API generation has no published keyword for."""
    if hasattr(qbcompiler, "CalibrationConfig"):
        return
    if not hasattr(qbcompiler, "QuantizationConfig"):
        raise QbCompilerMissing(
            f"qbcompiler {getattr(qbcompiler, '__version__', '?')} has neither CalibrationConfig nor QuantizationConfig"
        )
    if inference_scheme is not None or compile_device != "auto":
        raise CompileError(
            f"qbcompiler {getattr(qbcompiler, '__version__', '?')} is a release before CalibrationConfig; "
            "Mobilint's calls for it take neither inference_scheme nor device: leave out --inference-scheme "
            "and --compile-device, or use qbcompiler >= 1.0"
        )


def npu_manifest(graph: str, inference_scheme: str | None, compile_device: str) -> dict[str, Any]:
    """bundle.json's "npu" section for an .mxq compiled this way (see bertnpu_runtime.bundle.NpuSpec)."""
    return {
        "graph": graph,
        "compiled_inputs": list(MODEL_INPUTS) if graph == "model" else [ONNX_HIDDEN_INPUT],
        # The whole-model recipe marks attention_mask as the padding mask: whether the .mxq keeps
        # it as an input (a 0/1 keep mask) is read from the .mxq at launch.
        "mask_input": "auto" if graph == "model" else None,
        "inference_scheme": inference_scheme,
        "compile_device": resolve_compile_device(compile_device),
    }


def resolve_compile_device(compile_device: str) -> str:
    """ "auto" is "gpu" when CUDA is available, else "cpu", as Mobilint's STT encoder script decides."""
    if compile_device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return compile_device


def compile_mxq(
    bert: torch.nn.Module,
    calib_dir: Path,
    out_path: Path,
    *,
    example_ids: list[int],
    graph: str = "model",
    inference_scheme: str | None = None,
    compile_device: str = "auto",
) -> None:
    """Quantize and compile `bert` (graph "model") or `bert.encoder` (graph "encoder") to
    `out_path`, calibrated on the embedding outputs in `calib_dir`. `example_ids` are the token ids
    of one sentence, the example input of the whole-model graph."""
    qbcompiler = import_qbcompiler()
    kwargs: dict[str, Any] = {
        "model": _graph(bert, graph),
        "save_path": str(out_path),
        "calib_data_path": str(calib_dir),
        "backend": "torch",
        "feed_dict": _feed_dict(graph, example_ids, calib_dir),
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
        kwargs["device"] = resolve_compile_device(compile_device)
        if inference_scheme is not None:
            kwargs["inference_scheme"] = inference_scheme
    else:
        check_compiler_api(qbcompiler, inference_scheme, compile_device)
        kwargs["quantization_config"] = qbcompiler.QuantizationConfig.from_kwargs(**QUANTIZATION_SETTINGS)
    _call(qbcompiler, "mxq_compile", out_path, **kwargs)


def compile_mblt(
    bert: torch.nn.Module, calib_dir: Path, out_path: Path, *, example_ids: list[int], graph: str = "model"
) -> None:
    """The seed's analysis step: the graph as a .mblt file (open it in Netron to see unsupported
    layers), called as the seed calls it."""
    qbcompiler = import_qbcompiler()
    _call(
        qbcompiler,
        "mblt_compile",
        out_path,
        model=_graph(bert, graph),
        mblt_save_path=str(out_path),
        backend="torch",
        feed_dict=_feed_dict(graph, example_ids, calib_dir),
        cpu_offload=True,
    )


def _graph(bert: torch.nn.Module, graph: str) -> torch.nn.Module:
    return (bert if graph == "model" else EncoderOnly(bert.encoder)).eval()


def _feed_dict(graph: str, example_ids: list[int], calib_dir: Path) -> dict[str, Any]:
    """The example inputs, wrapped the seed tutorial's way: each wrap_tensor'ed with its sequence
    axis marked dynamic; for the whole model, attention_mask marked as the padding mask."""
    try:
        from qbcompiler.model_dict.parser.backend.torch.object_wrapper import set_attention_mask
        from qbcompiler.model_dict.parser.backend.torch.util import wrap_tensor
    except ImportError as exc:
        raise QbCompilerMissing(f"qbcompiler has no torch backend wrap_tensor / set_attention_mask ({exc})") from exc
    if graph == "model":
        ids = torch.tensor([example_ids], dtype=torch.int64)  # [1, seq]
        tensors = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids)}
    else:
        sample = load_calibration_sample(checked_calibration_files(calib_dir)[0])  # [1, seq, hidden]
        tensors = {ONNX_HIDDEN_INPUT: torch.from_numpy(sample)}
    feed_dict = {}
    for name, tensor in tensors.items():
        wrapped = wrap_tensor(name, tensor)
        wrapped.src_shape[1].set_dynamic()
        feed_dict[name] = wrapped
    if graph == "model":
        set_attention_mask(feed_dict["attention_mask"], "padding_mask")
    return feed_dict


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
