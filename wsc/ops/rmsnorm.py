"""RMS norm over the last dim: out = x * rsqrt(mean(x^2) + eps) * weight, as torch.nn.RMSNorm computes it.

Inputs: x [R, D] and, when the norm has one, weight [D]. attrs["eps"] is a number: legalize gives torch's
default (the dtype's machine epsilon) when the model gives none. Like layer norm, the row's statistic covers
the whole row whatever columns a tile writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import KernelOp, Shape, output_view, register, rows_in_flight
from wsc.ops.codegen import FAST, KernelBuilder, KernelIR, KernelSpec, f32, for_range, i64, load_at, loop, store_at


def lower_rmsnorm(spec: KernelSpec) -> KernelIR:
    if len(spec.out_shape) != 2 or len(spec.in_shapes) not in (1, 2):
        raise ValueError(f"rmsnorm: expected out [R, D] and inputs x and an optional weight; got {spec}")
    rows, d = spec.out_shape
    if spec.in_shapes != ((rows, d), (d,))[: len(spec.in_shapes)]:
        raise ValueError(f"rmsnorm: inputs {spec.in_shapes}, expected [{rows}, {d}] and [{d}]")
    if "eps" not in spec.attrs:
        raise ValueError("rmsnorm: attrs need eps (legalize gives torch's default when the model has none)")
    eps = float(spec.attrs["eps"])
    kb = KernelBuilder(spec, ["f32"] * len(spec.in_shapes))
    b = kb.b
    x_ptr = kb.inputs[0]
    w_ptr = kb.inputs[1] if len(kb.inputs) > 1 else None
    sqrt = kb.intrinsic("llvm.sqrt")

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            x_row = b.gep(x_ptr, [b.mul(r, i64(d))], inbounds=True)
            o_row = b.gep(kb.out, [b.mul(r, i64(d))], inbounds=True)

            def add_sq(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                x = load_at(b, x_row, k)
                return [b.fadd(acc[0], b.fmul(x, x, flags=FAST), flags=FAST)]

            (sq,) = loop(b, i64(0), i64(d), [f32(0.0)], add_sq, name="sq")
            rstd = b.fdiv(f32(1.0), b.call(sqrt, [b.fadd(b.fdiv(sq, f32(d)), f32(eps))]))
            with for_range(b, c0, c1, "c") as c:
                y = b.fmul(load_at(b, x_row, c), rstd)
                if w_ptr is not None:
                    y = b.fmul(y, load_at(b, w_ptr, c))
                store_at(b, y, o_row, c)
    return kb.finish()


@register
class RmsNorm(KernelOp):
    """RMS norm over the last dim, 4 FLOPs an element (square, sum, scale, weight). SRAM: input and output
    tiles plus the tile's columns of the weight. Traffic: reads 2 * tile (sum of squares, normalise) + tc
    (weight), writes the tile."""

    name = "rmsnorm"
    flops_per_element = 4

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        return 2 * rows_in_flight(tr) * tc * size + (len(node.inputs) - 1) * tc * size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return (2 * tr * tc + (len(node.inputs) - 1) * tc) * size, tr * tc * size

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """The row's mean and variance (or sum of exponentials) each add its whole length."""
        return max(1, output_view(node.shape)[1])

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        view = output_view(node.shape)
        return view, [view] + [(view[1],) for _ in node.inputs[1:]]

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_rmsnorm(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        x = inputs[0].astype(np.float64)
        y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + float(attrs["eps"]))
        return y * inputs[1].astype(np.float64) if len(inputs) > 1 else y
