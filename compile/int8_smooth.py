"""SmoothQuant-style rescaling of MatMul inputs before int8 quantization (Xiao et al., 2023).

BERT's LayerNorm outputs carry a few channels whose magnitude is many times the rest; one per-tensor
activation scale then leaves the ordinary channels only a few int8 levels. For a MatMul y = x·W,
dividing input channel j by s_j and multiplying row j of W by s_j leaves y unchanged in float32 but
moves the outliers into the weights, which are quantized per output channel and take them well:
    s_j = max|x_j| ** alpha / max|W_j,:| ** (1 - alpha)
The LayerNorm output is also the residual, so the division cannot be folded into LayerNorm's gamma;
it is an explicit float Mul in front of the MatMul(s) reading that tensor (Q, K and V share one).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bertnpu_runtime.encoder_graph import encoder_feed, takes_packed

from .calibration import load_calibration_sample


def smooth_matmul_inputs(model: onnx.ModelProto, matmul_names: list[str], calib_files: list[Path], alpha: float) -> int:
    """Rescale, in place, the inputs of the named weight MatMuls; returns how many tensors were smoothed."""
    import onnxruntime as ort

    initializers = {init.name: init for init in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.name in matmul_names and node.input[1] in initializers:
            readers[node.input[0]].append(node)
    if not readers:
        return 0

    activation_max = _channel_abs_max(model, list(readers), calib_files, ort)
    for tensor, nodes in readers.items():
        weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]  # each [in, out]
        weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # [in]
        scale = activation_max[tensor] ** alpha / np.maximum(weight_max, 1e-8) ** (1 - alpha)
        scale = np.where(activation_max[tensor] > 0, np.maximum(scale, 1e-5), 1.0).astype(np.float32)
        for node, weight in zip(nodes, weights):
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
        smoothed, inverse = f"{tensor}_smoothed", f"{tensor}_smooth_inverse_scale"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        position = min(list(model.graph.node).index(n) for n in nodes)
        model.graph.node.insert(
            position, helper.make_node("Mul", [tensor, inverse], [smoothed], name=f"SmoothQuant_{tensor}")
        )
        for node in nodes:
            node.input[0] = smoothed
    return len(readers)


def _channel_abs_max(model: onnx.ModelProto, tensors: list[str], calib_files: list[Path], ort) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each tensor (last axis) over the calibration sentences, float32 model."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in tensors)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    result: dict[str, np.ndarray] = {}
    packed = takes_packed(session)
    for path in calib_files:
        hidden = load_calibration_sample(path)  # [1, seq, hidden]
        feed = encoder_feed(hidden, np.ones(hidden.shape[:2], dtype=np.int64), packed)
        for name, value in zip(tensors, session.run(tensors, feed)):
            channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            result[name] = np.maximum(result[name], channel_max) if name in result else channel_max
    return result
