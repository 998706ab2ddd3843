"""The one dtype table (wsc/dtypes.py): its bytes, numpy and torch dtypes agree with numpy and torch."""

import numpy as np
import torch

from wsc.core import dtypes
from wsc.frontend.capture import TORCH_DTYPES
from wsc.passes.fold_constants import TORCH_DTYPE
from wsc.runtime.weight_store import SAFETENSORS_DTYPES


def test_bytes_are_numpys_and_torchs_itemsize():
    for d in dtypes.DTYPES:
        assert d.bytes == d.numpy.itemsize == d.torch.itemsize, d.name
        assert dtypes.BYTES[d.name] == d.bytes


def test_names_round_trip_through_torch():
    for d in dtypes.DTYPES:
        assert isinstance(d.torch, torch.dtype)
        assert str(d.torch) == f"torch.{d.name}"
        assert dtypes.torch_to_name()[d.torch] == d.name
        assert dtypes.name_to_torch()[d.name] is d.torch
    assert TORCH_DTYPES == dtypes.torch_to_name() and TORCH_DTYPE == dtypes.name_to_torch()


def test_numpy_dtypes_round_trip_through_torch():
    for d in dtypes.DTYPES:
        if d.name == "bfloat16":  # numpy has no bf16: the table holds its raw bits
            continue
        assert torch.from_numpy(np.zeros(3, d.numpy)).dtype is d.torch
        assert torch.zeros(3, dtype=d.torch).numpy().dtype == d.numpy


def test_short_names_and_the_old_tables():
    assert {s: d.name for s, d in dtypes.BY_SHORT.items()} == {"fp32": "float32", "fp16": "float16",
                                                               "bf16": "bfloat16"}
    assert dtypes.SHORT_BYTES == {"fp32": 4, "fp16": 2, "bf16": 2}
    assert dtypes.BYTES == {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1}
    for d in dtypes.DTYPES:
        assert SAFETENSORS_DTYPES[d.safetensors] == d.numpy
