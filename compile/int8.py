"""int8 encoder for the CPU: the closest ONNX Runtime counterpart of the qb Compiler's quantization.

The qb Compiler quantizes the encoder with per-channel weights and activation ranges taken from the
bundle's calibration set by "max-percentile" (percentile 0.999, top-k ratio 0.01). Here the same
calibration files drive ONNX Runtime's static QDQ quantization with per-channel int8 weights and the
Percentile calibrator at 99.9 % (ORT's percentile is in percent). ORT has no top-k parameter; see
docs/int8.md for what that means and for the measurements behind DEFAULT_OPTIONS.

Entry point: quantize_encoder(onnx_path, calib_dir, out_path) -> dict for bundle.json's "int8".
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bertnpu_runtime.encoder_graph import encoder_feed, takes_packed

from .calibration import checked_calibration_files, load_calibration_sample

# Roles of the MatMuls in a BERT layer, told apart by the graph alone (names differ between exporters).
QKV = "qkv"  # Q, K, V projections: three [hidden, hidden] weights reading the same tensor
ATTENTION_OUTPUT = "attention_output"  # attention output dense: [hidden, hidden]
FFN_UP = "ffn_up"  # intermediate dense: [hidden, 4 * hidden]
FFN_DOWN = "ffn_down"  # output dense, fed by GELU: [4 * hidden, hidden]
# MatMuls with an activation on both sides: attention scores Q·K^T and probabilities·V.
ATTENTION = "attention"
MATMUL_ROLES = (QKV, ATTENTION_OUTPUT, FFN_UP, FFN_DOWN, ATTENTION)
_PER_LAYER = {QKV: 3, ATTENTION_OUTPUT: 1, FFN_UP: 1, FFN_DOWN: 1, ATTENTION: 2}


@dataclass(frozen=True)
class Int8Options:
    """How to quantize. The defaults are the configuration chosen by measurement (docs/int8.md).

    percentile: ORT percentile in percent (the seed's 0.999 as a fraction is 99.9 %).
    symmetric_ranges: calibrate on |x| and use [-t, t] (ORT's default for Percentile); False cuts
        (100 - percentile) / 2 % off each tail of the signed values instead.
    activation_type: "uint8" or "int8" for activations; weights are always symmetric int8.
    reduce_range: 7-bit weights, ORT's advice for x86 CPUs without VNNI, where the u8 x s8 kernel
        adds pairs of products in int16 and can saturate; measured more accurate at equal speed here.
    quantize_roles: which MatMul roles (MATMUL_ROLES) get int8; the others stay float32.
    exclude_layers: {role: layer indices} kept in float32 although their role is quantized.
    other_op_types: further ONNX op types to quantize (e.g. "Add"); LayerNorm/Softmax/GELU stay float.
    quantize_outputs: also put Q/DQ on MatMul outputs (ORT's default; fused to QLinearMatMul). False
        leaves them float, which ORT fuses to MatMulIntegerToFloat (int8 inputs, float32 result).
    smooth_alpha: SmoothQuant migration strength for the inputs of quantized MatMuls
        (compile/int8_smooth.py); None leaves the graph as exported.
    smooth_roles: the MatMul roles whose inputs are smoothed (each costs a float Mul on its input).
    keep_shape_annotations: keep the intermediate shapes that pre-processing inferred. With them ORT
        fuses Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel measured slower
        here than the unfused pair the float32 encoder runs; ORT re-infers what it needs at load.
    """

    percentile: float = 99.999
    symmetric_ranges: bool = True
    activation_type: str = "uint8"
    reduce_range: bool = True
    quantize_roles: tuple[str, ...] = (QKV, ATTENTION_OUTPUT, FFN_UP, FFN_DOWN)
    exclude_layers: tuple[tuple[str, tuple[int, ...]], ...] = ()
    other_op_types: tuple[str, ...] = ()
    quantize_outputs: bool = False
    smooth_alpha: float | None = 0.75
    smooth_roles: tuple[str, ...] = (QKV, ATTENTION_OUTPUT, FFN_UP, FFN_DOWN)
    keep_shape_annotations: bool = False


DEFAULT_OPTIONS = Int8Options()


def quantize_encoder(
    onnx_path: Path,
    calib_dir: Path,
    out_path: Path,
    options: Int8Options = DEFAULT_OPTIONS,
    calibration_cache: Path | None = None,
) -> dict[str, Any]:
    """Write a static int8 (QDQ) copy of the float32 encoder at onnx_path to out_path.

    Activation ranges come from calib_dir/*.npy (each float32 [1, seq, hidden], one sentence,
    unpadded, as written for the qb Compiler). The int8 model keeps the encoder's interface
    (hidden_states, attention_mask -> last_hidden_state). calibration_cache, when given, is ORT's
    JSON range cache: reused if it exists (it must come from the same model, calib set and
    calibration settings), written otherwise.

    Returns a JSON-serializable description of how the model was made, for bundle.json["int8"].
    """
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, calib_dir, out_path = Path(onnx_path), Path(calib_dir), Path(out_path)
    calib_files = checked_calibration_files(calib_dir)
    _check_options(options)
    packed = takes_packed(onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]))

    with tempfile.TemporaryDirectory(prefix="bertnpu-int8-") as tmp:
        # Symbolic shape inference + ORT's basic graph optimizations (constant folding), as ORT
        # recommends before quantization: it folds weight transposes into plain initializers.
        prepared = Path(tmp) / "prepared.onnx"
        # auto_merge: the packed graph's token count comes both from its input and from NonZero of
        # the mask; they are the same dim, which shape inference cannot tell unless told to merge.
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=False, auto_merge=True)
        model = onnx.load(str(prepared))
        _name_unnamed_nodes(model)  # node selection below is by name
        roles = matmul_roles(model)
        chosen, excluded = _select_matmuls(roles, options)
        smoothed = 0
        if options.smooth_alpha is not None:
            from .int8_smooth import smooth_matmul_inputs

            to_smooth = [name for name in chosen if roles[name][0] in options.smooth_roles]
            smoothed = smooth_matmul_inputs(model, to_smooth, calib_files, options.smooth_alpha)
        onnx.save(model, str(prepared))
        op_types = ["MatMul", *options.other_op_types]
        other_nodes = [n.name for n in model.graph.node if n.op_type in options.other_op_types]
        if not chosen and not other_nodes:
            # quantize_static reads an empty nodes_to_quantize as "every node".
            raise ValueError(f"options select no node to quantize in {onnx_path}: {options}")
        activation_type = QuantType.QUInt8 if options.activation_type == "uint8" else QuantType.QInt8
        # ORT's calibrator prints a line per collected sample; keep the compile log readable.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                model_input=str(prepared),
                model_output=str(out_path),
                calibration_data_reader=_CalibrationReader(calib_files, packed),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_quantize=chosen + other_nodes,
                per_channel=True,
                reduce_range=options.reduce_range,
                activation_type=activation_type,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                calibration_cache_path=calibration_cache,
                extra_options={
                    "CalibPercentile": options.percentile,
                    "CalibTensorRangeSymmetric": options.symmetric_ranges,
                    "WeightSymmetric": True,
                    "OpTypesToExcludeOutputQuantization": [] if options.quantize_outputs else ["MatMul"],
                    "CalibStridedMinMax": 1,  # one sentence per collect_data call (see _CalibrationReader)
                    # Attention Q·K^T and P·V have no constant side; only quantize them when asked.
                    "MatMulConstBOnly": ATTENTION not in options.quantize_roles,
                },
            )

    if not options.keep_shape_annotations:
        quantized = onnx.load(str(out_path))
        del quantized.graph.value_info[:]
        onnx.save(quantized, str(out_path))

    counts = {role: sum(1 for r in roles.values() if r[0] == role) for role in MATMUL_ROLES}
    return {
        "format": "QDQ",
        "tool": "onnxruntime.quantization.quantize_static",
        "onnxruntime_version": onnxruntime.__version__,
        "preprocess": "quant_pre_process (symbolic shape inference, basic optimizations)",
        "weights": {
            "type": "int8",
            "symmetric": True,
            "per_channel": True,
            "channel_axis": 1,
            "reduce_range": options.reduce_range,
        },
        "activations": {
            "type": options.activation_type,
            "calibration": "percentile",
            "percentile": options.percentile,
            "symmetric_ranges": options.symmetric_ranges,
            "seed_equivalent": {"percentile": 0.999, "topk_ratio": 0.01, "topk_ratio_mapped": False},
        },
        "smoothquant": {"alpha": options.smooth_alpha, "tensors_smoothed": smoothed},
        "calibration_samples": len(calib_files),
        "op_types_quantized": op_types,
        "matmul_roles_quantized": list(options.quantize_roles),
        "matmuls": {"total": len(roles), "quantized": len(chosen), "by_role": counts},
        "nodes_excluded": sorted(excluded),
        "options": _jsonable(asdict(options)),
    }


class _CalibrationReader:
    """ORT CalibrationDataReader over calib/*.npy: each sentence alone, mask of ones (no padding).

    set_range/__len__ serve ORT's "CalibStridedMinMax" loop, which we run with a stride of 1: ORT's
    histogram collector stacks all samples of one collect_data call into one array, which fails
    for sentences of different lengths, so each sentence is collected on its own.
    """

    def __init__(self, files: list[Path], packed: bool) -> None:
        self._files = files
        self._packed = packed  # the graph's form (bertnpu_runtime/encoder_graph.py)
        self._iter: Iterator[Path] = iter(files)

    def __len__(self) -> int:
        return len(self._files)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._files[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._iter, None)
        if path is None:
            return None
        hidden = load_calibration_sample(path)  # [1, seq, hidden]
        return encoder_feed(hidden, np.ones(hidden.shape[:2], dtype=np.int64), self._packed)

    def rewind(self) -> None:
        self._iter = iter(self._files)


def matmul_roles(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """Every MatMul node's (role, layer index), the layer counted per role in graph order."""
    initializers = {init.name: tuple(init.dims) for init in model.graph.initializer}
    constants = {
        out: tuple(attr.t.dims)
        for node in model.graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
        for out in node.output
    }
    matmuls = [node for node in model.graph.node if node.op_type == "MatMul"]
    readers: dict[str, int] = {}
    for node in matmuls:
        readers[node.input[0]] = readers.get(node.input[0], 0) + 1
    seen: dict[str, int] = {}
    roles: dict[str, tuple[str, int]] = {}
    for node in matmuls:
        weight = initializers.get(node.input[1], constants.get(node.input[1]))
        if weight is None or len(weight) != 2:
            role = ATTENTION
        elif weight[0] == weight[1]:
            role = QKV if readers[node.input[0]] >= 3 else ATTENTION_OUTPUT
        else:
            role = FFN_UP if weight[0] < weight[1] else FFN_DOWN
        index = seen.get(role, 0)
        seen[role] = index + 1
        roles[node.name] = (role, index // _PER_LAYER[role])
    return roles


def _select_matmuls(roles: dict[str, tuple[str, int]], options: Int8Options) -> tuple[list[str], list[str]]:
    excluded_layers = dict(options.exclude_layers)
    chosen, excluded = [], []
    for name, (role, layer) in roles.items():
        if role in options.quantize_roles and layer not in excluded_layers.get(role, ()):
            chosen.append(name)
        else:
            excluded.append(name)
    return chosen, excluded


def _name_unnamed_nodes(model: onnx.ModelProto) -> None:
    names = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in names:
                node.name += "_"
            names.add(node.name)


def _check_options(options: Int8Options) -> None:
    if options.activation_type not in ("uint8", "int8"):
        raise ValueError(f'activation_type must be "uint8" or "int8", found {options.activation_type!r}')
    if not 0 < options.percentile <= 100:
        raise ValueError(f"percentile is in percent, 0 < p <= 100; found {options.percentile}")
    unknown = set(options.quantize_roles) - set(MATMUL_ROLES)
    if unknown:
        raise ValueError(f"unknown MatMul roles {sorted(unknown)}; expected some of {MATMUL_ROLES}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
