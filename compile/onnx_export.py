"""Export the encoder alone to ONNX, in one of the two forms of bertnpu_runtime/encoder_graph.py:
hidden_states ([tokens, hidden] packed, or [batch, seq, hidden] padded) float32 and a 0/1
attention_mask [batch, seq] int64 in, last_hidden_state [batch, seq, hidden] out, every axis but
hidden dynamic."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import BertModel

from bertnpu_runtime.bundle import ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT, ONNX_OUTPUT
from bertnpu_runtime.encoder_graph import encoder_feed, takes_packed

from .errors import CompileError

log = logging.getLogger(__name__)

OPSET = 18
# The graph is checked on a shape different from the export example, so a shape baked in as a
# constant (a lost dynamic axis) fails the check instead of the user's first odd-sized batch.
_EXAMPLE_SHAPE = (2, 7)
_CHECK_SHAPE = (3, 11)
_CHECK_ATOL = 1e-4


def export_encoder(bert: BertModel, out_path: Path, packed: bool = True) -> float:
    """Write `bert.encoder` as ONNX to `out_path`; return the largest |ONNX - torch| seen in the check.

    The packed form (bertnpu_runtime/encoder_graph.py) where `packed` and the layers allow it,
    checked against the padded torch encoder; else, or if that fails, the padded form. Uses the
    TorchScript exporter, which handles BERT well and takes about a second; the dynamo exporter
    (10+ s on a small CPU) is the fallback for a torch where the TorchScript one fails.
    """
    reference = EncoderWithMask(bert.encoder).eval()
    hidden_size = bert.config.hidden_size
    if packed and PackedEncoder.fits(bert):
        try:
            return _export(PackedEncoder(bert.encoder).eval(), reference, out_path, hidden_size, packed=True)
        except CompileError as exc:
            log.warning("writing the padded encoder graph: the packed one failed (%s)", exc)
    return _export(reference, reference, out_path, hidden_size, packed=False)


def _export(
    wrapper: torch.nn.Module, reference: torch.nn.Module, out_path: Path, hidden_size: int, packed: bool
) -> float:
    """Export `wrapper` (the packed or padded form) and check it against the padded `reference`."""
    batch, seq = _EXAMPLE_SHAPE
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[1, seq - 3 :] = 0  # the example has padding, so no shape of the graph follows from its having none
    hidden = torch.randn(int(mask.sum()), hidden_size) if packed else torch.randn(batch, seq, hidden_size)
    dims = {0: "batch", 1: "seq"}
    hidden_dims = {0: "tokens"} if packed else dims
    batch_dim, seq_dim, tokens_dim = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("tokens")
    exporters: dict[str, dict[str, Any]] = {
        "torchscript": {
            "dynamo": False,
            "dynamic_axes": {ONNX_HIDDEN_INPUT: hidden_dims, ONNX_MASK_INPUT: dims, ONNX_OUTPUT: dims},
        },
        "dynamo": {
            "dynamo": True,
            "dynamic_shapes": ({0: tokens_dim} if packed else {0: batch_dim, 1: seq_dim}, {0: batch_dim, 1: seq_dim}),
        },
    }
    failures = []
    for name, options in exporters.items():
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # deprecation chatter about exporter internals, not our graph
                torch.onnx.export(
                    wrapper,
                    (hidden, mask),
                    str(out_path),
                    input_names=[ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT],
                    output_names=[ONNX_OUTPUT],
                    opset_version=OPSET,
                    external_data=False,
                    verbose=False,
                    **options,
                )
            return check_encoder(reference, out_path, hidden_size)
        except Exception as exc:  # noqa: BLE001 - exporters raise many unrelated types; all mean "try the next one"
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            log.warning("the %s ONNX exporter failed (%s)", name, failures[-1])
    form = "packed" if packed else "padded"
    raise CompileError(f"{out_path}: exporting the {form} encoder to ONNX failed ({'; '.join(failures)})")


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


class PackedEncoder(torch.nn.Module):
    """BERT's or RoBERTa's encoder on the batch's real tokens only (the packed form of
    bertnpu_runtime/encoder_graph.py): hidden_states [tokens, hidden] and the 0/1 mask [batch, seq]
    in, last_hidden_state [batch, seq, hidden] out, zero where the mask is 0. Each layer's
    projections and feed-forward run on [tokens, hidden]; only the attention is laid out
    [batch, heads, seq, seq]. The layers' own modules compute; the attention is the eager one."""

    def __init__(self, encoder: Any) -> None:  # a transformers encoder: its modules are typed loosely
        super().__init__()
        self.layers: Any = encoder.layer
        attention = self.layers[0].attention.self
        self.heads, self.head_size = attention.num_attention_heads, attention.attention_head_size

    @staticmethod
    def fits(bert: Any) -> bool:
        """Whether `bert`'s layers are BERT's (RoBERTa's are the same) with absolute positions."""
        config = bert.config
        if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute") or getattr(
            config, "is_decoder", False
        ):
            return False
        parts = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "attention.output.LayerNorm", "intermediate", "output.dense", "output.LayerNorm")  # fmt: skip
        layers = getattr(bert.encoder, "layer", None)
        return layers is not None and all(_has(layer, part) for layer in layers for part in parts)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.reshape(-1) != 0  # [batch * seq]
        # Each place's row in the packed tokens; for the output, a padding place reads row -1, a zero row appended.
        rows = torch.where(keep, torch.cumsum(keep.to(torch.int64), 0) - 1, -1).reshape(attention_mask.shape)
        places = keep.nonzero().squeeze(1)  # [tokens]: each token's place in [batch * seq]
        bias = (1.0 - attention_mask[:, None, None, :].to(hidden_states.dtype)) * torch.finfo(hidden_states.dtype).min
        x = hidden_states[None]  # [1, tokens, hidden]: exported, a projection of rank 3 is a MatMul (int8.py's roles)
        # In the layers a padding place reads row 0, a real token's: attention masks it as a key, and
        # its query's result is dropped; a zero row appended at every gather would cost more.
        layer_rows = rows.clamp(min=0)
        for layer in self.layers:
            x = self._layer(layer, x, layer_rows, places, bias)
        return _padded(x[0], rows)

    def _layer(
        self, layer: Any, x: torch.Tensor, rows: torch.Tensor, places: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        attention = layer.attention.self
        batch, seq = rows.shape  # shapes given whole, not inferred: ORT's shape inference (int8) needs their rank

        def by_head(projected: torch.Tensor) -> torch.Tensor:  # [1, tokens, hidden] -> [batch, heads, seq, head_size]
            return projected[0][rows].reshape(batch, seq, self.heads, self.head_size).transpose(1, 2)

        query, key, value = by_head(attention.query(x)), by_head(attention.key(x)), by_head(attention.value(x))
        scores = query @ key.transpose(-1, -2) * self.head_size**-0.5 + bias
        context = (scores.softmax(-1) @ value).transpose(1, 2).reshape(-1, self.heads * self.head_size)[places][None]
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + x)
        return layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)


def _padded(packed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[tokens, width] -> [batch, seq, width], zero where `rows` is -1."""
    return torch.cat([packed, packed.new_zeros(1, packed.shape[1])])[rows]


def _has(module: torch.nn.Module, path: str) -> bool:
    """Whether `module` has a submodule at the dotted `path`."""
    found: Any = module
    for name in path.split("."):
        found = getattr(found, name, None)
        if not isinstance(found, torch.nn.Module):
            return False
    return True


def check_encoder(reference: torch.nn.Module, onnx_path: Path, hidden_size: int) -> float:
    """Run the exported graph (either form) with ONNX Runtime on a new batch/seq shape with
    padding; compare to the padded torch encoder `reference` on the real tokens."""
    import onnxruntime as ort

    batch, seq = _CHECK_SHAPE
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((batch, seq, hidden_size)).astype(np.float32)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, seq - 4 :] = 0  # padded rows, so the mask path is exercised
    mask[2, 2:] = 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run([ONNX_OUTPUT], encoder_feed(hidden, mask, takes_packed(session)))
    with torch.no_grad():
        expected = reference(torch.from_numpy(hidden), torch.from_numpy(mask)).numpy()
    error = float(np.abs(got - expected)[mask.astype(bool)].max()) if got.shape == expected.shape else math.inf
    if error > _CHECK_ATOL:
        raise CompileError(
            f"{onnx_path}: the exported encoder disagrees with torch on a [{batch}, {seq}] batch "
            f"(shape {got.shape} vs {expected.shape}, max abs error {error:.2e} > {_CHECK_ATOL})"
        )
    log.info("ONNX encoder matches torch on a [%d, %d] batch: max abs error %.2e", batch, seq, error)
    return error
