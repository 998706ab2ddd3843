"""Binary element-wise ops with broadcasting of the second operand: out = a (op) b.

b has shape [Rb, Cb] with R % Rb == 0 and Cb in {1, C} and is read at (r % Rb, c % Cb); this
covers the broadcasts the models need (bias rows, per-row scalars, full tensors) with a single
code shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.ops.base import KernelOp, Shape, output_view, register
from wsc.ops.codegen import (
    KernelBuilder,
    KernelIR,
    KernelSpec,
    for_range,
    i64,
    load_at,
    store_at,
)

BinOp = Callable[[ir.IRBuilder, ir.Value, ir.Value], ir.Value]


def _lower_binary(spec: KernelSpec, combine: BinOp) -> KernelIR:
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != 2:
        raise ValueError(f"{spec.op}: expected out [R, C] and inputs a [R, C], b [Rb, Cb]; got {spec}")
    rows, cols = spec.out_shape
    a_shape, b_shape = spec.in_shapes
    if a_shape != (rows, cols) or len(b_shape) != 2:
        raise ValueError(f"{spec.op}: a has shape {a_shape}, expected {(rows, cols)}; b must be 2-D")
    rb, cb = b_shape
    if (rb == 0 and rows != 0) or (rb and rows % rb) or cb not in (1, cols):
        raise ValueError(f"{spec.op}: b of shape {b_shape} does not broadcast to {(rows, cols)}")
    kb = KernelBuilder(spec, ["f32", "f32"])
    b = kb.b
    a_ptr, b_ptr = kb.inputs

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            a_base = b.mul(r, i64(cols))
            b_row = b.urem(r, i64(rb)) if rb != rows else r
            b_base = b.mul(b_row, i64(cb))
            scalar = load_at(b, b_ptr, b_base) if cb == 1 else None
            with for_range(b, c0, c1, "c") as c:
                idx = b.add(a_base, c)
                bv = scalar if scalar is not None else load_at(b, b_ptr, b.add(b_base, c))
                store_at(b, combine(b, load_at(b, a_ptr, idx), bv), kb.out, idx)
    return kb.finish()


def lower_add(spec: KernelSpec) -> KernelIR:
    return _lower_binary(spec, lambda b, x, y: b.fadd(x, y))


def lower_mul(spec: KernelSpec) -> KernelIR:
    return _lower_binary(spec, lambda b, x, y: b.fmul(x, y))


class Binary(KernelOp):
    """a (op) b, b broadcast over a's leading rows ([Rb, Cb], read at (r % Rb, c % Cb)); 1 FLOP an element.
    SRAM: a tile per tensor input and the output tile. Traffic: each input as the kernel indexes it (a full
    tile, one value per row, or a scalar in a register), the output tile written once."""

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        out, other = node.shape, graph[node.inputs[1]].shape
        b = (1,) * (len(out) - len(other)) + tuple(other)
        view = output_view(out)
        return view, [view, (math.prod(b[:-1]), b[-1])]

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        a, b = inputs
        rows, cols = a.shape
        rb, cb = b.shape
        return self.combine(a.astype(np.float64), np.tile(b.astype(np.float64), (rows // rb, cols // cb)))

    @staticmethod
    def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@register
class Add(Binary):
    name = "add"
    flops_per_element = 1

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_add(spec)

    @staticmethod
    def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def epilogue(self, graph: Graph, node: Node, position: int) -> tuple[dict[str, Any], str | None] | None:
        """A residual add: the kernel feeding one operand adds the other, of the output's full shape."""
        other = node.inputs[1 - position]
        return ({"residual": True}, other) if graph[other].shape == node.shape else None


@register
class Mul(Binary):
    name = "mul"
    flops_per_element = 1

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_mul(spec)

    @staticmethod
    def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b
