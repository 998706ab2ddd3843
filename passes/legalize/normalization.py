"""Rules for layer_norm and softmax."""

from __future__ import annotations

import numpy as np

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes


@legalizes("aten.layer_norm.default")
def _layer_norm(rw: Rewriter, node: Node) -> str:
    x, normalized = rw.arg(node, 0, "input"), rw.arg(node, 1, "normalized_shape")
    w, b, eps = rw.arg(node, 2, "weight"), rw.arg(node, 3, "bias"), rw.arg(node, 4, "eps", 1e-5)
    if len(normalized) != 1:
        raise rw.unsupported(node, "normalisation over more than the last dimension")
    d = normalized[0]
    w = w if w is not None else rw.const(np.ones(d, np.float32))
    b = b if b is not None else rw.const(np.zeros(d, np.float32))
    return rw.emit("layernorm", [x, w, b], node.shape, final=True, eps=float(eps))


@legalizes("aten.softmax.int", "aten._softmax.default")
def _softmax(rw: Rewriter, node: Node) -> str:
    x, dim = rw.arg(node, 0, "self"), rw.arg(node, 1, "dim")
    rank = len(rw.shape(x))
    if dim % rank != rank - 1:
        raise rw.unsupported(node, f"softmax over dimension {dim} (only the last dimension is supported)")
    rows = int(np.prod(rw.shape(x)[:-1]))
    return rw.emit("softmax", [x], node.shape, final=True, scale=1.0, causal=False, group_rows=rows)
