"""Rules for the reductions: sum, mean, amax, amin, var, std (and var_mean, std_mean), max and min values.

Every one becomes a row reduction of the op table (wsc/ops/reduce.py) over any dims: the reduced dims moved
last with a permute, the input reshaped to [rows, n], reduced to [rows, 1], reshaped to the output (keepdim
or not, rank 0 included). Layout ops are emitted only where the shapes differ.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes
from wsc.passes.legalize.normalization import spelled_out_rms_norm

FLOAT = "float32"  # the kernels compute in float32


def reduced_dims(dims: Any, rank: int) -> list[int]:
    """The dims a reduction covers, sorted and non-negative: None or an empty list is every dim (as torch
    reads them), an int one dim."""
    if dims is None:
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    if not dims:
        return list(range(rank))
    return sorted({d % rank for d in dims}) if rank else []


def reduce_over(rw: Rewriter, node: Node, op: str, x: str, dims: list[int], **attrs: Any) -> str:
    """op over `dims` of x, into the node's shape: permute the dims last, fold to [rows, n], reduce, unfold."""
    if rw.out[x].dtype != FLOAT or node.dtype != FLOAT:
        raise rw.unsupported(node, f"a reduction of {rw.out[x].dtype} into {node.dtype} (the kernels compute in "
                                   "float32: reduce float32 values, into float32)")
    shape = rw.shape(x)
    kept = [d for d in range(len(shape)) if d not in dims]
    order = kept + dims
    rows, n = math.prod(shape[d] for d in kept), math.prod(shape[d] for d in dims)
    if order != list(range(len(shape))):
        x = rw.emit("permute", [x], [shape[d] for d in order], dims=order)
    if rw.shape(x) != (rows, n):
        x = rw.emit("reshape", [x], (rows, n))
    if tuple(node.shape) == (rows, 1):
        return rw.emit(op, [x], (rows, 1), final=True, **attrs)
    return rw.emit("reshape", [rw.emit(op, [x], (rows, 1), **attrs)], node.shape, final=True)


def keyword(node: Node, name: str, default: Any = None) -> Any:
    """A keyword-only argument of the ATen op (a correction: never a tensor)."""
    return node.attrs.get("kwargs", {}).get(name, default)


@legalizes("aten.sum.dim_IntList", "aten.sum.default", "aten.mean.dim", "aten.mean.default",
           refuses="values other than float32 (a dtype= other than float32 too)")
def _sum_mean(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    dims = None if node.op.endswith(".default") else rw.arg(node, 1, "dim")
    op = "sum" if node.op.startswith("aten.sum") else "mean"
    if node.op == "aten.mean.dim" and (norm := spelled_out_rms_norm(rw, node)) is not None:
        return norm
    return reduce_over(rw, node, op, x, reduced_dims(dims, len(rw.shape(x))))


@legalizes("aten.amax.default", "aten.amin.default", "aten.max.default", "aten.min.default",
           refuses="values other than float32")
def _extremum(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    dims = None if node.op in ("aten.max.default", "aten.min.default") else rw.arg(node, 1, "dim", [])
    op = "amax" if node.op.startswith(("aten.amax", "aten.max")) else "amin"
    return reduce_over(rw, node, op, x, reduced_dims(dims, len(rw.shape(x))))


@legalizes("aten.max.dim", "aten.min.dim",
           refuses="the indices (argmax, argmin) when they are read, values other than float32")
def _extremum_dim(rw: Rewriter, node: Node) -> str:
    x, dim = rw.arg(node, 0, "self"), rw.arg(node, 1, "dim")
    if node.attrs.get("index") == 1:
        if rw.source.users(node.name) or node.name in rw.source.outputs:
            raise rw.unsupported(node, "the indices of max/min over a dim (compute only the values: amax, amin)")
        return rw.const(np.zeros(node.shape, np.int64))  # never read: dropped with the dead nodes
    op = "amax" if node.op == "aten.max.dim" else "amin"
    return reduce_over(rw, node, op, x, reduced_dims(dim, len(rw.shape(x))))


def correction_of(rw: Rewriter, node: Node) -> float:
    """Bessel's correction: `correction=` (None: 1) of the .correction overloads, `unbiased` of the others."""
    if node.op.endswith(".correction"):
        correction = keyword(node, "correction")
        return 1.0 if correction is None else float(correction)
    unbiased = rw.arg(node, 1 if node.op.endswith(".default") else 2, "unbiased", True)
    return 1.0 if unbiased else 0.0


@legalizes("aten.var.correction", "aten.var.dim", "aten.var.default", "aten.std.correction", "aten.std.dim",
           "aten.std.default", "aten.var_mean.correction", "aten.var_mean.dim", "aten.std_mean.correction",
           "aten.std_mean.dim", refuses="values other than float32")
def _var_std(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    dims = None if node.op.endswith(".default") else rw.arg(node, 1, "dim")
    dims = reduced_dims(dims, len(rw.shape(x)))
    kind = node.op.split(".")[1]  # var, std, var_mean, std_mean
    if kind.endswith("_mean") and node.attrs.get("index") == 1:
        return reduce_over(rw, node, "mean", x, dims)
    return reduce_over(rw, node, kind.removesuffix("_mean"), x, dims, correction=correction_of(rw, node))
