"""set_attention_mask(wrapped, mask_type), as Mobilint's BERT scripts import it."""

from __future__ import annotations

from .util import WrappedTensor


def set_attention_mask(wrapped: WrappedTensor, mask_type: str) -> None:
    if not isinstance(wrapped, WrappedTensor):
        raise TypeError("set_attention_mask takes a wrap_tensor(...) object")
    if mask_type != "padding_mask":  # the only type Mobilint's code passes
        raise ValueError(f"unknown mask type {mask_type!r}")
    wrapped.attention_mask = mask_type
