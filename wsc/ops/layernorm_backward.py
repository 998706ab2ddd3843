"""The input gradient of layer norm over the last dim:

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * w,  xhat = (x - mean) * rstd,
    rstd = 1 / sqrt(var + eps)

Each row's mean and biased variance are recomputed from x as the forward kernel computes them (two passes, so
a large |mean| does not cancel), and the row means of g and g * xhat cover the whole row whatever columns a
tile writes: any split of the output into tiles gives the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import KernelOp, Shape, output_view, register, rows_in_flight
from wsc.ops.codegen import (
    FAST,
    KernelBuilder,
    KernelIR,
    KernelSpec,
    f32,
    for_range,
    i64,
    load_at,
    loop,
    store_at,
)


def lower_layernorm_backward(spec: KernelSpec) -> KernelIR:
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != 3:
        raise ValueError(f"layernorm_backward: expected out [R, D] and inputs dy, x, weight; got {spec}")
    rows, d = spec.out_shape
    if spec.in_shapes != ((rows, d), (rows, d), (d,)):
        raise ValueError(f"layernorm_backward: inputs {spec.in_shapes}, expected [{rows}, {d}], [{rows}, {d}], [{d}]")
    eps = float(spec.attrs.get("eps", 1e-5))
    kb = KernelBuilder(spec, ["f32", "f32", "f32"])
    b = kb.b
    dy_ptr, x_ptr, w_ptr = kb.inputs
    sqrt = kb.intrinsic("llvm.sqrt")
    inv_d = f32(1.0 / d if d else 0.0)

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            base = b.mul(r, i64(d))
            x_row = b.gep(x_ptr, [base], inbounds=True)
            dy_row = b.gep(dy_ptr, [base], inbounds=True)
            o_row = b.gep(kb.out, [base], inbounds=True)

            def add_x(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                return [b.fadd(acc[0], load_at(b, x_row, k), flags=FAST)]

            (total,) = loop(b, i64(0), i64(d), [f32(0.0)], add_x, name="sum")
            mean = b.fmul(total, inv_d)

            def add_sq(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                dev = b.fsub(load_at(b, x_row, k), mean)
                return [b.fadd(acc[0], b.fmul(dev, dev, flags=FAST), flags=FAST)]

            (sq,) = loop(b, i64(0), i64(d), [f32(0.0)], add_sq, name="var")
            rstd = b.fdiv(f32(1.0), b.call(sqrt, [b.fadd(b.fmul(sq, inv_d), f32(eps))]))

            # The row sums and the output compute g and xhat with the same instructions (no contraction), so
            # the values the sums saw are the ones the output combines.
            def g_at(k: ir.Value) -> ir.Value:
                return b.fmul(load_at(b, dy_row, k), load_at(b, w_ptr, k))

            def xhat_at(k: ir.Value) -> ir.Value:
                return b.fmul(b.fsub(load_at(b, x_row, k), mean), rstd)

            def add_g(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                g = g_at(k)
                return [b.fadd(acc[0], g, flags=FAST),
                        b.fadd(acc[1], b.fmul(g, xhat_at(k), flags=FAST), flags=FAST)]

            sum_g, sum_gx = loop(b, i64(0), i64(d), [f32(0.0), f32(0.0)], add_g, name="gsum")
            mean_g, mean_gx = b.fmul(sum_g, inv_d), b.fmul(sum_gx, inv_d)
            with for_range(b, c0, c1, "c") as c:
                centred = b.fsub(b.fsub(g_at(c), mean_g), b.fmul(xhat_at(c), mean_gx))
                store_at(b, b.fmul(centred, rstd), o_row, c)
    return kb.finish()


def layernorm_backward_reference(dy: np.ndarray, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    dy, x, w = (v.astype(np.float64) for v in (dy, x, w))
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy * w
    return rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))


@register
class LayerNormBackward(KernelOp):
    """layer norm's input gradient, 14 FLOPs an element: the row's mean (1) and variance (3: subtract, square,
    add), xhat (2), g (1), the sums of g and g * xhat (3), and the output (4: two subtractions, the xhat
    product, the scaling). SRAM: the dy, x and output rows in flight and the tile's columns of the weight.
    Traffic: reads x four times (mean, variance, sums, output), dy and the weight twice (sums, output), writes
    the tile."""

    name = "layernorm_backward"
    flops_per_element = 14

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        return 3 * rows_in_flight(tr) * tc * size + tc * size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return (6 * tr * tc + 2 * tc) * size, tr * tc * size

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """The row's mean, variance and the two means of g each add its whole length."""
        return max(1, output_view(node.shape)[1])

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """dy and x as [rows, D]; the weight as [D]."""
        view = output_view(node.shape)
        return view, [view, view, (view[1],)]

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_layernorm_backward(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        dy, x, w = inputs
        return layernorm_backward_reference(dy, x, w, float(attrs.get("eps", 1e-5)))
