"""Rules for the ATen ops that move data or name a value another way: layout ops, identities, casts, constants."""

from __future__ import annotations

import math

import numpy as np

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes


@legalizes("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
           "aten.unsqueeze.default", "aten.squeeze.dim", "aten.flatten.using_ints")
def _reshape(rw: Rewriter, node: Node) -> str:
    return rw.emit("reshape", [rw.arg(node, 0, "self")], node.shape, final=True)


@legalizes("aten.transpose.int", "aten.permute.default", "aten.t.default")
def _permute(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    rank = len(rw.shape(x))
    if node.op == "aten.permute.default":
        dims = [d % rank for d in rw.arg(node, 1, "dims")]
    else:
        d0, d1 = (rw.arg(node, 1, "dim0", 0), rw.arg(node, 2, "dim1", 1)) if rank > 1 else (0, 0)
        dims = list(range(rank))
        dims[d0 % rank], dims[d1 % rank] = dims[d1 % rank], dims[d0 % rank]
    return rw.emit("permute", [x], node.shape, final=True, dims=dims)


@legalizes("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default")
def _split(rw: Rewriter, node: Node) -> str:
    x, size = rw.arg(node, 0, "self"), rw.arg(node, 1, "split_size")
    dim = rw.arg(node, 2, "dim", 0) % len(rw.shape(x))
    extent, index = rw.shape(x)[dim], node.attrs["index"]
    if node.op == "aten.chunk.default":
        size = math.ceil(extent / size)
    sizes = list(size) if isinstance(size, (list, tuple)) else [size] * math.ceil(extent / size)
    start = sum(sizes[:index])
    return rw.emit("slice", [x], node.shape, final=True, dim=dim, start=start, end=start + node.shape[dim])


@legalizes("aten.slice.Tensor")
def _slice(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    dim = rw.arg(node, 1, "dim", 0) % len(rw.shape(x))
    if rw.arg(node, 4, "step", 1) != 1:
        raise rw.unsupported(node, "strided slices")
    start = rw.arg(node, 2, "start", 0) or 0
    start = start + rw.shape(x)[dim] if start < 0 else min(start, rw.shape(x)[dim])
    return rw.emit("slice", [x], node.shape, final=True, dim=dim, start=start, end=start + node.shape[dim])


@legalizes("aten.alias.default", "aten.clone.default", "aten.contiguous.default", "aten.detach.default",
           "aten.lift_fresh_copy.default", "aten._assert_tensor_metadata.default")
def _identity(rw: Rewriter, node: Node) -> str:
    return rw.arg(node, 0, "self")


@legalizes("aten.to.dtype_layout", "aten.to.dtype", "aten._to_copy.default", "aten.type_as.default")
def _cast(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    if rw.out[x].dtype != node.dtype:
        raise rw.unsupported(node, f"a cast from {rw.out[x].dtype} to {node.dtype} (compile in one dtype)")
    return x


@legalizes("aten.expand.default")
def _expand(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    if rw.shape(x) != node.shape:
        raise rw.unsupported(node, f"expanding {rw.shape(x)} to {node.shape} outside an elementwise op")
    return x


@legalizes("aten.dropout.default")
def _dropout(rw: Rewriter, node: Node) -> str:
    if rw.arg(node, 2, "train", False) and rw.arg(node, 1, "p", 0.0) > 0:
        raise rw.unsupported(node, "dropout in training mode (call model.eval() first)")
    return rw.arg(node, 0, "input")


@legalizes("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(rw: Rewriter, node: Node) -> str:
    args = [rw.arg(node, i, n) for i, n in enumerate(("start", "end", "step"))]
    numbers = [a for a in args if isinstance(a, (int, float))]
    value = np.arange(*numbers).astype("int64" if node.dtype == "int64" else "float32")
    return rw.emit("const", [], node.shape, node.dtype, final=True, value=value)
