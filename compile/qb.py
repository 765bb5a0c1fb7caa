"""Mobilint qb Compiler steps: model.mxq (and the optional .mblt analysis graph), called exactly as
Mobilint's own BERT scripts call the compiler. Two recipes (`--npu-graph`), each for a board
(`--target-device aries-rb | regulus-rb`):

- "model" (default; the seed tutorial, mblt-sdk-tutorial compilation/bert/compile_mxq.py and, for
  REGULUS, compile_mxq_regulus.py): the whole `BertModel`, its example inputs `input_ids`,
  `token_type_ids` and `attention_mask` each `wrap_tensor`'ed with the sequence axis marked dynamic,
  `attention_mask` marked as the padding mask. The compiler cuts off the embedding layers (the host
  computes them); the .mxq takes the embedding output, and whether it also takes the padding mask
  is read from the .mxq at run time. ARIES: `mxq_compile(model=, save_path=, calib_data_path=,
  backend="torch", feed_dict=, calibration_config=, device=)` (+ `inference_scheme=` when given),
  no `target_device`, as the ARIES files pass none. REGULUS: `target_device="regulus2"` and
  `inference_scheme="single"`, the values of Mobilint's REGULUS file, and no `device`.
- "encoder" (mblt-sdk-tutorial compilation/bert/compile_model.py, mxq_compile.py, mblt_compile.py):
  `BertBody`, the encoder alone, `hidden_states` in; the example input is the model's own embedding
  layer's output for one sentence, a plain tensor, with `dynamic_axes={"hidden_states": [1]}` and
  `target_device` passed to both `mblt_compile` and `mxq_compile`; `inference_scheme` "all" on
  ARIES (unless `--inference-scheme` says otherwise), "single" on REGULUS. The .mxq has no mask
  input: the runtime sends each sentence unpadded.

`device=` (the machine that compiles) is passed as those files pass it: always in the ARIES
whole-model call, elsewhere only when `--compile-device` names one. Older qbcompiler releases
(before CalibrationConfig) get the seed tutorial's call with `quantization_config=`.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import BertModel

from bertnpu_runtime import bundle
from bertnpu_runtime.bundle import ONNX_HIDDEN_INPUT
from bertnpu_runtime.families import RUN_ON_A_CARD

from .errors import CompileError

log = logging.getLogger(__name__)

MBLT_FILE = "model.mblt"
NPU_GRAPHS = bundle.NPU_GRAPHS
INFERENCE_SCHEMES = bundle.NPU_INFERENCE_SCHEMES
TARGET_DEVICES = bundle.NPU_TARGET_DEVICES
COMPILE_DEVICES = ("auto", "gpu", "cpu")
# What Mobilint's whole-model REGULUS file (compile_mxq_regulus.py) passes as target_device.
WHOLE_MODEL_REGULUS_TARGET = "regulus2"
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


@dataclass(frozen=True)
class NpuCompileOptions:
    """How to compile the .mxq: the recipe (graph), the board, its core modes and the compiling
    machine. Checked when made, so a wrong combination fails before any work."""

    graph: str = "model"
    target_device: str = "aries-rb"
    inference_scheme: str | None = None
    compile_device: str = "auto"

    def __post_init__(self) -> None:
        for flag, value, allowed in (
            ("--npu-graph", self.graph, NPU_GRAPHS),
            ("--target-device", self.target_device, TARGET_DEVICES),
            ("--inference-scheme", self.inference_scheme, (None, *INFERENCE_SCHEMES)),
            ("--compile-device", self.compile_device, COMPILE_DEVICES),
        ):
            if value not in allowed:
                raise CompileError(f"{flag} {value!r}: expected one of {[a for a in allowed if a is not None]}")
        if self.regulus and self.inference_scheme not in (None, "single"):
            raise CompileError(
                f"--inference-scheme {self.inference_scheme}: REGULUS has one core, so --target-device regulus-rb "
                "compiles with inference scheme 'single' (leave out --inference-scheme, or give single)"
            )

    @property
    def regulus(self) -> bool:
        return self.target_device == "regulus-rb"

    @property
    def scheme(self) -> str | None:
        """The inference_scheme passed to the compiler (None: none is passed, the compiler's default)."""
        if self.regulus:
            return "single"
        if self.graph == "encoder":
            return self.inference_scheme or "all"
        return self.inference_scheme

    def manifest(self, bert: BertModel, family: str) -> dict[str, Any]:
        """bundle.json's "npu" section for an .mxq of `bert` (of `family`) compiled this way (see
        bertnpu_runtime.bundle.NpuSpec)."""
        return {
            "graph": self.graph,
            "compiled_inputs": list(model_inputs(bert)) if self.graph == "model" else [ONNX_HIDDEN_INPUT],
            # Mobilint's tutorial compiles and runs BERT; other families' graphs are untried on a card.
            "run_on_a_card": family in RUN_ON_A_CARD,
            # The whole-model recipe marks attention_mask as the padding mask: whether the .mxq keeps
            # it as an input (a 0/1 keep mask) is read from the .mxq at launch.
            "mask_input": "auto" if self.graph == "model" else None,
            "inference_scheme": self.scheme,
            "target_device": self.target_device,
            "compile_device": _compiling_device(self).get("device"),  # None: left to the compiler
        }


class QbCompilerMissing(CompileError):
    """qbcompiler cannot be imported here; the message says what to install."""


class BertBody(torch.nn.Module):
    """The encoder alone, as Mobilint's newer BERT recipe wraps it: hidden_states [1, seq, hidden]
    (the embedding layer's output) -> the last hidden state."""

    def __init__(self, model: BertModel) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.encoder(hidden_states, return_dict=False)[0]


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


def check_compiler_api(qbcompiler: ModuleType, options: NpuCompileOptions) -> None:
    """Refuse, before any work, options that this qbcompiler's API generation has no published keyword for."""
    if hasattr(qbcompiler, "CalibrationConfig"):
        return
    if not hasattr(qbcompiler, "QuantizationConfig"):
        raise QbCompilerMissing(
            f"qbcompiler {getattr(qbcompiler, '__version__', '?')} has neither CalibrationConfig nor QuantizationConfig"
        )
    if options != NpuCompileOptions(options.graph):  # a board, scheme or device other than the defaults
        raise CompileError(
            f"qbcompiler {getattr(qbcompiler, '__version__', '?')} is a release before CalibrationConfig; "
            "Mobilint's calls for it take neither target_device, inference_scheme nor device: leave out "
            "--target-device, --inference-scheme and --compile-device, or use qbcompiler >= 1.0"
        )
    if options.graph == "encoder":
        raise CompileError(
            f"qbcompiler {getattr(qbcompiler, '__version__', '?')} is a release before CalibrationConfig; "
            "Mobilint's encoder recipe (dynamic_axes, target_device) needs qbcompiler >= 1.0: use --npu-graph model"
        )


def resolve_compile_device(compile_device: str) -> str:
    """ "auto" is "gpu" when CUDA is available, else "cpu", as Mobilint's STT encoder script decides."""
    if compile_device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return compile_device


def compile_mxq(
    bert: BertModel,
    calib_dir: Path,
    out_path: Path,
    *,
    example_ids: list[int],
    options: NpuCompileOptions,
) -> None:
    """Quantize and compile `bert` by `options`' recipe to `out_path`, calibrated on the embedding
    outputs in `calib_dir`. `example_ids` are the token ids of one sentence, the example input."""
    qbcompiler = import_qbcompiler()  # checked against `options` before any work (check_compiler_api)
    if not hasattr(qbcompiler, "CalibrationConfig"):  # the seed tutorial's call
        kwargs: dict[str, Any] = {
            "model": _graph(bert, options),
            "save_path": str(out_path),
            "calib_data_path": str(calib_dir),
            "backend": "torch",
            "feed_dict": _feed_dict(bert, options, example_ids),
            "quantization_config": qbcompiler.QuantizationConfig.from_kwargs(**QUANTIZATION_SETTINGS),
        }
        _call(qbcompiler, "mxq_compile", out_path, **kwargs)
        return
    kwargs = {
        "model": _graph(bert, options),
        **_board(options, whole_model_target=WHOLE_MODEL_REGULUS_TARGET),
        "save_path": str(out_path),
        "calib_data_path": str(calib_dir),
        "backend": "torch",
        "feed_dict": _feed_dict(bert, options, example_ids),
        **_dynamic_axes(options),
        **({"inference_scheme": options.scheme} if options.scheme is not None else {}),
        "calibration_config": _calibration_config(qbcompiler),
        **_compiling_device(options),
    }
    _call(qbcompiler, "mxq_compile", out_path, **kwargs)


def compile_mblt(
    bert: BertModel, calib_dir: Path, out_path: Path, *, example_ids: list[int], options: NpuCompileOptions
) -> None:
    """The analysis step: the graph as a .mblt file (open it in Netron to see unsupported layers).
    The whole model as the seed calls it; the encoder as Mobilint's mblt_compile.py does."""
    qbcompiler = import_qbcompiler()
    if options.graph == "model":
        extra: dict[str, Any] = {"cpu_offload": True}
    else:
        extra = {**_board(options, whole_model_target=None), **_dynamic_axes(options)}
    _call(
        qbcompiler,
        "mblt_compile",
        out_path,
        model=_graph(bert, options),
        mblt_save_path=str(out_path),
        backend="torch",
        feed_dict=_feed_dict(bert, options, example_ids),
        **extra,
    )


def model_inputs(bert: BertModel) -> tuple[str, ...]:
    """The whole-model recipe's inputs that this model's forward takes (MPNet has no token types)."""
    accepted = inspect.signature(bert.forward).parameters
    return tuple(name for name in MODEL_INPUTS if name in accepted)


def _graph(bert: BertModel, options: NpuCompileOptions) -> torch.nn.Module:
    return (bert if options.graph == "model" else BertBody(bert)).eval()


def _board(options: NpuCompileOptions, whole_model_target: str | None) -> dict[str, Any]:
    """target_device as each recipe passes it: the encoder recipe always, the whole-model recipe on
    REGULUS only (`whole_model_target`, Mobilint's value for it there)."""
    if options.graph == "encoder":
        return {"target_device": options.target_device}
    return {"target_device": whole_model_target} if options.regulus and whole_model_target else {}


def _dynamic_axes(options: NpuCompileOptions) -> dict[str, Any]:
    """The encoder recipe marks the sequence axis with dynamic_axes (the whole-model one wraps its inputs instead)."""
    return {"dynamic_axes": {ONNX_HIDDEN_INPUT: [1]}} if options.graph == "encoder" else {}


def _compiling_device(options: NpuCompileOptions) -> dict[str, Any]:
    """device= where Mobilint's file for this recipe and board passes it: the ARIES whole-model call
    always; the others only when --compile-device names a device."""
    if options.graph == "model" and not options.regulus:
        return {"device": resolve_compile_device(options.compile_device)}
    return {} if options.compile_device == "auto" else {"device": options.compile_device}


def _calibration_config(qbcompiler: ModuleType) -> Any:
    settings = QUANTIZATION_SETTINGS
    config = qbcompiler.CalibrationConfig
    return config(
        method=settings["quantization_method"],
        output=settings["quantization_output"],
        mode=settings["quantization_mode"],
        max_percentile=config.MaxPercentile(percentile=settings["percentile"], topk_ratio=settings["topk_ratio"]),
    )


def _feed_dict(bert: BertModel, options: NpuCompileOptions, example_ids: list[int]) -> dict[str, Any]:
    """The example input of one sentence. Whole model: its three inputs, each wrap_tensor'ed with
    the sequence axis marked dynamic, attention_mask marked as the padding mask (the seed's way).
    Encoder: the model's own embedding layer's output, a plain tensor (the newer recipe's way)."""
    ids = torch.tensor([example_ids], dtype=torch.int64)  # [1, seq]
    token_types = torch.zeros_like(ids)
    if options.graph == "encoder":
        with torch.inference_mode():
            hidden_states = bert.embeddings(input_ids=ids, token_type_ids=token_types)  # [1, seq, hidden]
        return {ONNX_HIDDEN_INPUT: hidden_states}
    try:
        from qbcompiler.model_dict.parser.backend.torch.object_wrapper import set_attention_mask
        from qbcompiler.model_dict.parser.backend.torch.util import wrap_tensor
    except ImportError as exc:
        raise QbCompilerMissing(f"qbcompiler has no torch backend wrap_tensor / set_attention_mask ({exc})") from exc
    examples = {"input_ids": ids, "token_type_ids": token_types, "attention_mask": torch.ones_like(ids)}
    tensors = {name: examples[name] for name in model_inputs(bert)}
    feed_dict = {}
    for name, tensor in tensors.items():
        wrapped = wrap_tensor(name, tensor)
        wrapped.src_shape[1].set_dynamic()
        feed_dict[name] = wrapped
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
