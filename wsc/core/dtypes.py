"""The dtype table: every element type wsc knows, once, with each name the layers spell it by.

A core module: it imports numpy only, and torch lazily (`DType.torch`), so reading the table costs no torch
import. For each dtype:

- `name`: the IR's name (`Node.dtype`), which is also torch's (`torch.float32` is "float32");
- `short`: the precision's short name where wsc uses one ("fp32", "fp16", "bf16": a target's compute
  precision, the weight store's stored precision), else None;
- `bytes`: bytes per element;
- `numpy`: the numpy dtype holding it (bfloat16 has none: its raw bits, as uint16);
- `safetensors`: its dtype code in a safetensors header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    name: str
    short: str | None
    bytes: int
    numpy: np.dtype
    safetensors: str

    @property
    def torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.name)


DTYPES: tuple[DType, ...] = (
    DType("float32", "fp32", 4, np.dtype(np.float32), "F32"),
    DType("float16", "fp16", 2, np.dtype(np.float16), "F16"),
    DType("bfloat16", "bf16", 2, np.dtype(np.uint16), "BF16"),
    DType("int64", None, 8, np.dtype(np.int64), "I64"),
    DType("int32", None, 4, np.dtype(np.int32), "I32"),
    DType("bool", None, 1, np.dtype(np.bool_), "BOOL"),
)
BY_NAME: dict[str, DType] = {d.name: d for d in DTYPES}
BY_SHORT: dict[str, DType] = {d.short: d for d in DTYPES if d.short is not None}
BYTES: dict[str, int] = {d.name: d.bytes for d in DTYPES}  # IR name -> bytes per element
SHORT_BYTES: dict[str, int] = {s: d.bytes for s, d in BY_SHORT.items()}  # "fp16" -> 2, ...


def torch_to_name() -> dict[torch.dtype, str]:
    """torch dtype -> IR name, for every dtype of the table (imports torch)."""
    return {d.torch: d.name for d in DTYPES}


def name_to_torch() -> dict[str, torch.dtype]:
    """IR name -> torch dtype, for every dtype of the table (imports torch)."""
    return {d.name: d.torch for d in DTYPES}
