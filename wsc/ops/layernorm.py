"""Layer norm over the last dim: out = (x - mean) / sqrt(var + eps) * weight + bias.

Row statistics always cover the whole row, even when a tile writes only some of its columns, so
any split of the output into tiles produces the same values. Two passes (mean, then the biased
variance of x - mean) rather than sum / sum-of-squares, which cancels badly when |mean| >> std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import KernelOp, Shape, output_view, register
from wsc.ops.codegen import (
    CONTRACT,
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


def lower_layernorm(spec: KernelSpec) -> KernelIR:
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != 3:
        raise ValueError(f"layernorm: expected out [R, D] and inputs x, weight, bias; got {spec}")
    rows, d = spec.out_shape
    if spec.in_shapes != ((rows, d), (d,), (d,)):
        raise ValueError(f"layernorm: inputs {spec.in_shapes}, expected [{rows}, {d}], [{d}], [{d}]")
    eps = float(spec.attrs.get("eps", 1e-5))
    kb = KernelBuilder(spec, ["f32", "f32", "f32"])
    b = kb.b
    x_ptr, w_ptr, bias_ptr = kb.inputs
    sqrt = kb.intrinsic("llvm.sqrt")
    inv_d = f32(1.0 / d if d else 0.0)

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            x_row = b.gep(x_ptr, [b.mul(r, i64(d))], inbounds=True)
            o_row = b.gep(kb.out, [b.mul(r, i64(d))], inbounds=True)

            def add_x(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                return [b.fadd(acc[0], load_at(b, x_row, k), flags=FAST)]

            (total,) = loop(b, i64(0), i64(d), [f32(0.0)], add_x, name="sum")
            mean = b.fmul(total, inv_d)

            def add_sq(k: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                dev = b.fsub(load_at(b, x_row, k), mean)
                return [b.fadd(acc[0], b.fmul(dev, dev, flags=FAST), flags=FAST)]

            (sq,) = loop(b, i64(0), i64(d), [f32(0.0)], add_sq, name="var")
            var = b.fmul(sq, inv_d)
            rstd = b.fdiv(f32(1.0), b.call(sqrt, [b.fadd(var, f32(eps))]))
            with for_range(b, c0, c1, "c") as c:
                y = b.fmul(b.fsub(load_at(b, x_row, c), mean), rstd)
                y = b.fmul(y, load_at(b, w_ptr, c), flags=CONTRACT)
                store_at(b, b.fadd(y, load_at(b, bias_ptr, c), flags=CONTRACT), o_row, c)
    return kb.finish()


@register
class LayerNorm(KernelOp):
    """Layer norm over the last dim, 8 FLOPs an element. SRAM: input and output tiles plus the tile's columns
    of scale and shift. Traffic: reads 3 * tile (mean, variance, normalise) + 2 * tc (scale, shift), writes the
    tile."""

    name = "layernorm"
    flops_per_element = 8

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        return super().sram_bytes(graph, node, cut, size, resident) + 2 * tc * size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return (3 * tr * tc + 2 * tc) * size, tr * tc * size

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """The row's mean and variance (or sum of exponentials) each add its whole length."""
        return max(1, output_view(node.shape)[1])

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """x as [rows, D]; scale and shift as [D] (a norm over several trailing dims holds them in that shape)."""
        view = output_view(node.shape)
        return view, [view, (view[1],), (view[1],)]

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_layernorm(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        x, w, b = (v.astype(np.float64) for v in inputs)
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + float(attrs.get("eps", 1e-5))) * w + b
