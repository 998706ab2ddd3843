"""The input gradient of GELU: dy * gelu'(x), matching torch's gelu_backward.

    approximate="none":  gelu'(x) = Phi(x) + x * phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2,
                         phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    approximate="tanh":  with u = k (x + a x^3), t = tanh(u), k = sqrt(2 / pi), a = 0.044715,
                         gelu'(x) = (1 + t) / 2 + x / 2 * (1 - t^2) * k * (1 + 3 a x^2)

erf, tanh and exp are gelu.py's inline forms (no libm call, so the loop vectorises), so the forward and the
backward round their shared parts alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.ops.base import KernelOp, Shape, register
from wsc.ops.codegen import (
    KernelBuilder,
    KernelIR,
    KernelSpec,
    emit_vector_exp,
    f32,
    for_range,
    i64,
    load_at,
    store_at,
)
from wsc.ops.gelu import check_approximate, emit_erf, emit_tanh

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715


def emit_gelu_slope(kb: KernelBuilder, x: ir.Value, approximate: str) -> ir.Value:
    """gelu'(x) as straight-line code."""
    b = kb.b
    x2 = b.fmul(x, x)
    if approximate == "tanh":
        u = b.fmul(f32(_K), b.fadd(x, b.fmul(x, b.fmul(x2, f32(_A)))))
        t = emit_tanh(kb, u)
        du = b.fmul(f32(_K), b.fadd(f32(1.0), b.fmul(x2, f32(3.0 * _A))))
        # 1 - t^2 as (1 - t)(1 + t): no cancellation where t is near -1.
        sech2 = b.fmul(b.fsub(f32(1.0), t), b.fadd(f32(1.0), t))
        left = b.fmul(f32(0.5), b.fadd(f32(1.0), t))
        return b.fadd(left, b.fmul(b.fmul(b.fmul(x, f32(0.5)), sech2), du))
    cdf = b.fmul(f32(0.5), b.fadd(f32(1.0), emit_erf(kb, b.fmul(x, f32(math.sqrt(0.5))))))
    pdf = b.fmul(emit_vector_exp(b, b.fmul(x2, f32(-0.5))), f32(1.0 / math.sqrt(2.0 * math.pi)))
    return b.fadd(cdf, b.fmul(x, pdf))


def lower_gelu_backward(spec: KernelSpec) -> KernelIR:
    approximate = check_approximate("gelu_backward", spec.attrs.get("approximate", "none"))
    if len(spec.out_shape) != 2 or spec.in_shapes != (spec.out_shape, spec.out_shape):
        raise ValueError(f"gelu_backward: expected out [R, C] and inputs dy, x of the same shape; got {spec}")
    cols = spec.out_shape[1]
    kb = KernelBuilder(spec, ["f32", "f32"])
    b = kb.b
    dy_ptr, x_ptr = kb.inputs
    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            base = b.mul(r, i64(cols))
            with for_range(b, c0, c1, "c") as c:
                idx = b.add(base, c)
                slope = emit_gelu_slope(kb, load_at(b, x_ptr, idx), approximate)
                store_at(b, b.fmul(load_at(b, dy_ptr, idx), slope), kb.out, idx)
    return kb.finish()


def gelu_slope_reference(x: np.ndarray, approximate: str) -> np.ndarray:
    """gelu'(x) in float64."""
    x = x.astype(np.float64)
    if approximate == "tanh":
        t = np.tanh(_K * (x + _A * x**3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _K * (1.0 + 3.0 * _A * x * x)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@register
class GeluBackward(KernelOp):
    """dy * gelu'(x), 14 FLOPs an element: the forward's 8 (erf or tanh and its scaling), the density or the
    tanh's derivative (4), the sum of the two terms and the product with dy. SRAM: the dy, x and output tiles;
    traffic: read dy and x once, write the tile once."""

    name = "gelu_backward"
    flops_per_element = 14

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_gelu_backward(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        dy, x = inputs
        approximate = check_approximate("gelu_backward", attrs.get("approximate", "none"))
        return dy.astype(np.float64) * gelu_slope_reference(x, approximate)
