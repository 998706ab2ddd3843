"""The layout ops: reshape, permute and slice. They move data and compute nothing; on the wafer a value's layout
is how it is routed, so they take no PEs of their own. The host moves the data with numpy; the SRAM traffic of
the busiest PE is its tile read and written once."""

from __future__ import annotations

import numpy as np

from wsc.core.ir import Node
from wsc.ops.base import LayoutOp, register


@register
class Reshape(LayoutOp):
    """The same elements in the same order, another shape."""

    name = "reshape"
    keeps_order = True

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        return value.reshape(node.shape)


@register
class Permute(LayoutOp):
    """Dimensions reordered: output dimension i is input dimension attrs["dims"][i]."""

    name = "permute"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        return np.ascontiguousarray(value.transpose(node.attrs["dims"]))


@register
class Slice(LayoutOp):
    """attrs["start"] .. attrs["end"] along dimension attrs["dim"]."""

    name = "slice"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        index = [slice(None)] * len(node.shape)
        index[node.attrs["dim"]] = slice(node.attrs["start"], node.attrs["end"])
        return np.ascontiguousarray(value[tuple(index)])
