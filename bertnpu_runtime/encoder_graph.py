"""The ONNX encoder's two forms, and the inputs each takes.

Both take `attention_mask` [batch, seq] (1 = a real token) and give `last_hidden_state`
[batch, seq, hidden]. They differ in `hidden_states`:
- padded: [batch, seq, hidden], every sentence padded to the batch's longest;
- packed: [tokens, hidden], the batch's real tokens only, sentence after sentence. Its dense
  layers run on those rows alone, so a batch of mixed lengths pays for padding only in attention;
  its output is zero where the mask is 0.
compile/ writes the packed form where the family's layers allow it (BERT, RoBERTa), else the
padded one; a bundle's graph says which by the rank of its `hidden_states` input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bundle import ONNX_HIDDEN_INPUT, ONNX_MASK_INPUT


def hidden_input(session: Any) -> Any:
    """An ONNX Runtime session's `hidden_states` input (its NodeArg: name, shape, type)."""
    return next(i for i in session.get_inputs() if i.name == ONNX_HIDDEN_INPUT)


def takes_packed(session: Any) -> bool:
    """Whether an ONNX Runtime session's encoder takes packed hidden states ([tokens, hidden])."""
    return len(hidden_input(session).shape or ()) == 2


def encoder_feed(hidden: np.ndarray, attention_mask: np.ndarray, packed: bool) -> dict[str, np.ndarray]:
    """The feed for a padded batch (hidden [batch, seq, hidden], attention_mask [batch, seq]):
    as it is, or with the padding rows left out for a packed graph."""
    if packed:
        hidden = hidden[attention_mask != 0]  # [tokens, hidden], row-major: sentence after sentence
    return {ONNX_HIDDEN_INPUT: hidden, ONNX_MASK_INPUT: attention_mask}
