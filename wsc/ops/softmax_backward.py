"""The input gradient of a row softmax or log_softmax, from its output y and the output's gradient dy:

    softmax_backward (log=False)  dx = y * (dy - sum_c(dy * y))
    softmax_backward (log=True)   dx = dy - exp(y) * sum_c(dy)     (y is log_softmax's output)

The row sum covers the whole row whatever columns a tile writes, so any split into tiles gives the same bits.
exp is codegen's inline one (the loop vectorises); below exp's normal range it is 0, where exp(y) * sum is
below any rounding of dy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import KernelPlan
from wsc.ops.base import KernelOp, Shape, output_view, register
from wsc.ops.codegen import (
    FAST,
    KernelBuilder,
    KernelIR,
    KernelSpec,
    emit_vector_exp,
    f32,
    for_range,
    i64,
    load_at,
    loop,
    store_at,
)


def lower_softmax_backward(spec: KernelSpec) -> KernelIR:
    if len(spec.out_shape) != 2 or spec.in_shapes != (spec.out_shape, spec.out_shape):
        raise ValueError(f"softmax_backward: expected out [R, C] and inputs dy, y of the same shape; got {spec}")
    log = bool(spec.attrs.get("log", False))
    cols = spec.out_shape[1]
    kb = KernelBuilder(spec, ["f32", "f32"])
    b = kb.b
    dy_ptr, y_ptr = kb.inputs

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            base = b.mul(r, i64(cols))
            dy_row = b.gep(dy_ptr, [base], inbounds=True)
            y_row = b.gep(y_ptr, [base], inbounds=True)
            o_row = b.gep(kb.out, [base], inbounds=True)

            def add(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                term = load_at(b, dy_row, k)
                if not log:
                    term = b.fmul(term, load_at(b, y_row, k), flags=FAST)
                return [b.fadd(acc[0], term, flags=FAST)]

            (total,) = loop(b, i64(0), i64(cols), [f32(0.0)], add, name="sum")
            with for_range(b, c0, c1, "c") as c:
                dy, y = load_at(b, dy_row, c), load_at(b, y_row, c)
                if log:
                    dx = b.fsub(dy, b.fmul(emit_vector_exp(b, y), total))
                else:
                    dx = b.fmul(y, b.fsub(dy, total))
                store_at(b, dx, o_row, c)
    return kb.finish()


def softmax_backward_reference(dy: np.ndarray, y: np.ndarray, log: bool) -> np.ndarray:
    dy, y = dy.astype(np.float64), y.astype(np.float64)
    if log:
        return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


@register
class SoftmaxBackward(KernelOp):
    """softmax's (or log_softmax's) input gradient, 4 FLOPs an element: the row sum's multiply-add (or add and
    the exp), a subtraction and a product. SRAM: the dy, y and output tiles. Traffic: reads dy and y twice (the
    row sum, the output), writes the tile."""

    name = "softmax_backward"
    flops_per_element = 4

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return 4 * tr * tc * size, tr * tc * size

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """The row's sum adds its whole length."""
        return max(1, output_view(node.shape)[1])

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_softmax_backward(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        dy, y = inputs
        return softmax_backward_reference(dy, y, bool(attrs.get("log", False)))
