"""Binary element-wise ops with broadcasting of the second operand: out = a (op) b.

b has shape [Rb, Cb] with R % Rb == 0 and Cb in {1, C} and is read at (r % Rb, c % Cb); this
covers the broadcasts the models need (bias rows, per-row scalars, full tensors) with a single
code shape.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from wsc.runtime.lowering import (
    KernelBuilder,
    KernelIR,
    KernelSpec,
    for_range,
    i64,
    load_at,
    register_lowering,
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


@register_lowering("add")
def lower_add(spec: KernelSpec) -> KernelIR:
    return _lower_binary(spec, lambda b, x, y: b.fadd(x, y))


@register_lowering("mul")
def lower_mul(spec: KernelSpec) -> KernelIR:
    return _lower_binary(spec, lambda b, x, y: b.fmul(x, y))
