"""Write embeddings.npz: the embedding tables and embedding LayerNorm of a BertModel, float32, plus eps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import BertModel

from bertnpu_runtime.bundle import LN_BIAS_KEY, LN_EPS_KEY, LN_WEIGHT_KEY, POSITION_KEY, TOKEN_TYPE_KEY, WORD_KEY


def export_embeddings(bert: BertModel, out_path: Path) -> None:
    """Save `bert.embeddings` under the bundle's key names; eps is the model's own layer_norm_eps."""
    embeddings = bert.embeddings

    def array(parameter: torch.Tensor) -> np.ndarray:
        return parameter.detach().to(torch.float32).cpu().numpy()

    if getattr(embeddings, "token_type_embeddings", None) is not None:
        token_types = array(embeddings.token_type_embeddings.weight)
    else:
        token_types = np.zeros((1, bert.config.hidden_size), np.float32)
    np.savez(
        out_path,
        **{
            WORD_KEY: array(embeddings.word_embeddings.weight),  # [vocab, hidden]
            POSITION_KEY: array(embeddings.position_embeddings.weight),  # [max_positions, hidden]
            TOKEN_TYPE_KEY: token_types,  # [type_vocab, hidden]; MPNet has none: one zero row
            LN_WEIGHT_KEY: array(embeddings.LayerNorm.weight),  # [hidden]
            LN_BIAS_KEY: array(embeddings.LayerNorm.bias),  # [hidden]
            LN_EPS_KEY: np.float64(bert.config.layer_norm_eps),
        },
    )
