"""Rules for linear, addmm and the matrix products: each becomes the matmul kernel, whose second operand is
read transposed ([N, K])."""

from __future__ import annotations

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes


@legalizes("aten.linear.default")
def _linear(rw: Rewriter, node: Node) -> str:
    x, w, b = rw.arg(node, 0, "input"), rw.arg(node, 1, "weight"), rw.arg(node, 2, "bias")
    if len(rw.shape(w)) != 2:
        raise rw.unsupported(node, f"weight of rank {len(rw.shape(w))}")
    inputs = [x, w] + ([b] if b is not None else [])
    return rw.emit("matmul", inputs, node.shape, final=True, bias=b is not None)


@legalizes("aten.addmm.default")
def _addmm(rw: Rewriter, node: Node) -> str:
    """bias + x @ w, as Hugging Face's GPT-2 Conv1D computes it (w stored [K, N])."""
    bias, x, w = rw.arg(node, 0, "self"), rw.arg(node, 1, "mat1"), rw.arg(node, 2, "mat2")
    if rw.arg(node, 3, "beta", 1) != 1 or rw.arg(node, 4, "alpha", 1) != 1 or rw.shape(bias) != node.shape[-1:]:
        raise rw.unsupported(node, "addmm with scaling factors or a bias that is not one row")
    k, n = rw.shape(w)
    w_t = rw.emit("permute", [w], [n, k], dims=[1, 0])
    return rw.emit("matmul", [x, w_t, bias], node.shape, final=True, bias=True)


@legalizes("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(rw: Rewriter, node: Node) -> str:
    a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "other")
    a_shape, b_shape = rw.shape(a), rw.shape(b)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise rw.unsupported(node, "matrix-vector products (an operand of rank 1)")
    if len(b_shape) > 2 and (len(b_shape) != len(a_shape) or b_shape[:-2] != a_shape[:-2]):
        raise rw.unsupported(node, f"batch broadcasting between {a_shape} and {b_shape}")
    # The kernel reads its second operand transposed ([N, K]): K is contiguous for both operands.
    dims = list(range(len(b_shape)))
    dims[-1], dims[-2] = dims[-2], dims[-1]
    bt = rw.emit("permute", [b], [b_shape[d] for d in dims], dims=dims)
    return rw.emit("matmul", [a, bt], node.shape, final=True, bias=False)
