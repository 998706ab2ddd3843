"""The layout ops: they move data and compute nothing. On the wafer a value's layout is how it is routed, so they
take no PEs of their own; the host moves the data with numpy, exactly (no element is computed, only copied). The
SRAM traffic of the busiest PE is its tile read and written once.

Ops that read index tensors (index_select, gather, index) take them as inputs after the value: integers, known at
compile time (a const) or computed at run time. The range is torch's: [0, size) for index_select and gather,
[-size, size) for indexing (x[i]), where a negative entry counts from the end. An entry out of range is an error,
as in torch, never a clamp."""

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
    """attrs["start"] .. attrs["end"] along dimension attrs["dim"], every attrs["step"]-th element (default 1);
    start and end are in [0, size]."""

    name = "slice"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        index = [slice(None)] * len(node.shape)
        index[node.attrs["dim"]] = slice(node.attrs["start"], node.attrs["end"], node.attrs.get("step", 1))
        return np.ascontiguousarray(value[tuple(index)])


@register
class Concat(LayoutOp):
    """The inputs one after the other along attrs["dim"] (every input non-empty, of the output's rank)."""

    name = "concat"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        return np.concatenate(values, axis=node.attrs["dim"])


@register
class Expand(LayoutOp):
    """The input broadcast to the output's shape and materialised (numpy's broadcasting: size-1 dims repeat,
    leading dims are added)."""

    name = "expand"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        return np.ascontiguousarray(np.broadcast_to(value, node.shape))


@register
class Repeat(LayoutOp):
    """The input tiled attrs["repeats"] times along each dim (leading repeats add dims), as torch's repeat."""

    name = "repeat"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        return np.ascontiguousarray(np.tile(value, node.attrs["repeats"]).reshape(node.shape))


@register
class RepeatInterleave(LayoutOp):
    """Each element along attrs["dim"] repeated attrs["repeats"] times (one count, or one per element)."""

    name = "repeat_interleave"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        return np.repeat(value, node.attrs["repeats"], axis=node.attrs["dim"])


@register
class Flip(LayoutOp):
    """The order of the elements reversed along each of attrs["dims"]."""

    name = "flip"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        return np.ascontiguousarray(np.flip(value, node.attrs["dims"]))


@register
class Pad(LayoutOp):
    """attrs["widths"][d] = (before, after) elements of attrs["value"] added at either end of dim d; a negative
    width removes elements instead, as torch's constant_pad_nd."""

    name = "pad"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        widths = node.attrs["widths"]
        grown = np.pad(value, [(max(b, 0), max(a, 0)) for b, a in widths], constant_values=node.attrs["value"])
        crop = tuple(slice(max(-b, 0), grown.shape[d] - max(-a, 0)) for d, (b, a) in enumerate(widths))
        return np.ascontiguousarray(grown[crop])


def _checked(op: str, index: np.ndarray, size: int, dim: int, negative: bool = False) -> np.ndarray:
    """`index` as int64, each entry in [0, size) (or [-size, size) with `negative`), else the error torch gives."""
    index = np.asarray(index)
    if index.dtype.kind not in "iu":
        raise ValueError(f"{op}: indices of dtype {index.dtype}, expected an integer tensor")
    bad = (index < (-size if negative else 0)) | (index >= size)
    if bad.any():
        raise ValueError(f"{op}: index {int(index[bad].flat[0])} is out of range for dim {dim} of size {size}")
    return index.astype(np.int64, copy=False)


@register
class IndexSelect(LayoutOp):
    """The entries index[i] of the input along attrs["dim"]; inputs: the value, then a 1-D (or 0-D) index."""

    name = "index_select"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        value, index = values
        value = value.reshape(value.shape or (1,))  # torch takes a 0-d input as one of one element
        dim = node.attrs["dim"]
        index = _checked(self.name, index, value.shape[dim], dim).reshape(-1)
        return np.ascontiguousarray(np.take(value, index, axis=dim)).reshape(node.shape)


@register
class Gather(LayoutOp):
    """out[..., i, ...] = input[..., index[..., i, ...], ...] along attrs["dim"], as torch.gather: the index has
    the input's rank and is no larger than it in the other dims; the output has the index's shape."""

    name = "gather"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        value, index = values
        value, index = value.reshape(value.shape or (1,)), index.reshape(index.shape or (1,))  # 0-d as torch takes it
        dim = node.attrs["dim"]
        where: list[np.ndarray] = list(np.indices(index.shape, sparse=True))
        where[dim] = _checked(self.name, index, value.shape[dim], dim)
        return np.ascontiguousarray(value[tuple(where)]).reshape(node.shape)


@register
class Index(LayoutOp):
    """Advanced indexing, as torch's x[i, :, j]: inputs the value, then one integer index tensor for each dim
    of attrs["dims"] (the others taken whole). The index tensors broadcast together, and the dims they
    produce go where torch (and numpy) put them: in place when the indexed dims are adjacent, else first."""

    name = "index"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        value, *indices = values
        where: list[slice | np.ndarray] = [slice(None)] * value.ndim
        for dim, index in zip(node.attrs["dims"], indices, strict=True):
            where[dim] = _checked(self.name, index, value.shape[dim], dim, negative=True)
        return np.ascontiguousarray(value[tuple(where)]).reshape(node.shape)


@register
class Cast(LayoutOp):
    """The same elements converted to the node's dtype (int64 or bool to float32, a mask to bool: nonzero is
    True), as torch converts them: a float to an integer rounds toward zero."""

    name = "cast"
    converts = True

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (value,) = values
        return value.astype(np.dtype(node.dtype))
