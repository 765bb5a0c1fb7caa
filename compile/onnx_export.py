"""Export the encoder alone to ONNX: hidden_states [batch, seq, hidden] float32 and a 0/1 attention_mask
[batch, seq] int64 in, last_hidden_state [batch, seq, hidden] out, with dynamic batch and seq axes."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import BertModel

from bertnpu_runtime.bundle import ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT, ONNX_OUTPUT

from .errors import CompileError

log = logging.getLogger(__name__)

OPSET = 18
# The graph is checked on a shape different from the export example, so a shape baked in as a
# constant (a lost dynamic axis) fails the check instead of the user's first odd-sized batch.
_EXAMPLE_SHAPE = (2, 7)
_CHECK_SHAPE = (3, 11)
_CHECK_ATOL = 1e-4


def export_encoder(bert: BertModel, out_path: Path) -> float:
    """Write `bert.encoder` as ONNX to `out_path`; return the largest |ONNX - torch| seen in the check.

    Uses the TorchScript exporter, which handles BERT well and takes about a second; the dynamo
    exporter (10+ s on a small CPU) is the fallback for a torch where the TorchScript one fails.
    """
    wrapper = EncoderWithMask(bert.encoder).eval()
    hidden_size = bert.config.hidden_size
    batch, seq = _EXAMPLE_SHAPE
    example = (torch.randn(batch, seq, hidden_size), torch.ones(batch, seq, dtype=torch.int64))
    dims = {0: "batch", 1: "seq"}
    batch_dim, seq_dim = torch.export.Dim("batch"), torch.export.Dim("seq")
    exporters: dict[str, dict[str, Any]] = {
        "torchscript": {
            "dynamo": False,
            "dynamic_axes": {ONNX_HIDDEN_INPUT: dims, ONNX_MASK_INPUT: dims, ONNX_OUTPUT: dims},
        },
        "dynamo": {"dynamo": True, "dynamic_shapes": ({0: batch_dim, 1: seq_dim}, {0: batch_dim, 1: seq_dim})},
    }
    failures = []
    for name, options in exporters.items():
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # deprecation chatter about exporter internals, not our graph
                torch.onnx.export(
                    wrapper,
                    example,
                    str(out_path),
                    input_names=[ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT],
                    output_names=[ONNX_OUTPUT],
                    opset_version=OPSET,
                    external_data=False,
                    verbose=False,
                    **options,
                )
            return check_encoder(wrapper, out_path, hidden_size)
        except Exception as exc:  # noqa: BLE001 - exporters raise many unrelated types; all mean "try the next one"
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            log.warning("the %s ONNX exporter failed (%s)", name, failures[-1])
    raise CompileError(f"{out_path}: exporting the encoder to ONNX failed ({'; '.join(failures)})")


class EncoderWithMask(torch.nn.Module):
    """The encoder (BERT's, RoBERTa's, MPNet's) with the 0/1 padding mask turned into the additive
    attention bias inside the graph (MPNet's relative position bias is computed inside it too)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask[:, None, None, :].to(hidden_states.dtype)  # [batch, 1, 1, seq]
        bias = (1.0 - keep) * torch.finfo(hidden_states.dtype).min
        return self.encoder(hidden_states, attention_mask=bias)[0]  # the last hidden state (MPNet's is a tuple)


def check_encoder(wrapper: torch.nn.Module, onnx_path: Path, hidden_size: int) -> float:
    """Run the exported graph with ONNX Runtime on a new batch/seq shape with padding; compare to torch."""
    import onnxruntime as ort

    batch, seq = _CHECK_SHAPE
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((batch, seq, hidden_size)).astype(np.float32)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, seq - 4 :] = 0  # one padded row, so the mask path is exercised
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run([ONNX_OUTPUT], {ONNX_HIDDEN_INPUT: hidden, ONNX_MASK_INPUT: mask})
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(hidden), torch.from_numpy(mask)).numpy()
    error = float(np.abs(got - expected)[mask.astype(bool)].max())
    if got.shape != expected.shape or error > _CHECK_ATOL:
        raise CompileError(
            f"{onnx_path}: the exported encoder disagrees with torch on a [{batch}, {seq}] batch "
            f"(shape {got.shape} vs {expected.shape}, max abs error {error:.2e} > {_CHECK_ATOL})"
        )
    log.info("ONNX encoder matches torch on a [%d, %d] batch: max abs error %.2e", batch, seq, error)
    return error
