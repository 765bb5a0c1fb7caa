"""wrap_tensor(name, tensor), as Mobilint's BERT scripts import it."""

from __future__ import annotations

import torch


class _Dim:
    def __init__(self, size: int) -> None:
        self.size, self.dynamic = size, False

    def set_dynamic(self) -> None:
        self.dynamic = True


class WrappedTensor:
    """An example input with a name and a shape whose axes can be marked dynamic."""

    def __init__(self, name: str, tensor: torch.Tensor) -> None:
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError("wrap_tensor(name: str, tensor: torch.Tensor)")
        self.name, self.tensor = name, tensor
        self.src_shape = [_Dim(d) for d in tensor.shape]
        self.attention_mask: str | None = None


def wrap_tensor(name: str, tensor: torch.Tensor) -> WrappedTensor:
    return WrappedTensor(name, tensor)
