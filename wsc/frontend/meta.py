"""Build models without their weights: parameters on the meta device, buffers real.

Compiling needs only shapes, so a 13B model (52 GB of fp32 weights) is built with every parameter on the
meta device: no memory is written for it. Buffers stay real, because a model may compute from them at compile
time (a causal mask registered as a buffer); they are small. Parameters are moved to meta as they are
registered, so initialisers that run afterwards (reset_parameters, nn.init) touch no memory either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def empty_weights() -> Iterator[None]:
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign,assignment]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (tied parameters counted once)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
