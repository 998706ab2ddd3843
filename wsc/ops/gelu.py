"""GELU, exact (erf) or tanh-approximated, matching torch.nn.functional.gelu.

LLVM has no erf intrinsic and a libm call would stop vectorisation, so erf is computed inline
from two branch-free approximations fitted (least squares, float64) for this kernel:
  |x| < 1:  erf(x) = x * P(x^2), an odd polynomial, which avoids cancellation near 0;
  |x| >= 1: erf(x) = 1 - t * Q(t) * exp(-x^2), t = 1 / (1 + p|x|), the Abramowitz-Stegun 7.1.26
            form with a higher-degree Q.
Evaluated in float32 the result is within ~1.5e-7 of erf (about 2 ulp); both branches are
computed and selected so the loop stays straight-line code. The exp in the tail (and in the tanh form) is
codegen's inline `emit_vector_exp`, not LLVM's exp intrinsic: the intrinsic is a call of the C library's expf,
which the vectoriser can only issue once per lane (GELU ran at less than half its speed); the inline one
vectorises with the rest (its 0 below exp's normal range is erf's 1 and tanh's -1 either way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.ops.base import KernelOp, Shape, register
from wsc.ops.codegen import (
    CONTRACT,
    KernelBuilder,
    KernelIR,
    KernelSpec,
    emit_vector_exp,
    f32,
    horner,
    lower_unary,
)

_ERF_SMALL = (
    1.1283791662326477,
    -0.37612629767094163,
    0.11283634634318734,
    -0.026856069567803634,
    0.005192957865325046,
    -0.0008053751098747314,
    8.006874067006259e-05,
)
_ERF_P = 0.3275911
_ERF_LARGE = (
    0.17414455342511276,
    0.28195369090936606,
    -0.19446813633203738,
    0.900025510724216,
    -0.6860459089205555,
    0.478798548078148,
    0.11757102568542796,
    -0.07197928409094537,
)


def emit_erf(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    b = kb.b
    fabs = kb.intrinsic("llvm.fabs")
    copysign = kb.intrinsic("llvm.copysign", 2)
    ax = b.call(fabs, [x])
    x2 = b.fmul(x, x)
    small = b.fmul(x, horner(b, x2, _ERF_SMALL))
    t = b.fdiv(f32(1.0), b.fadd(f32(1.0), b.fmul(f32(_ERF_P), ax), flags=CONTRACT))
    tail = b.fmul(b.fmul(t, horner(b, t, _ERF_LARGE)), emit_vector_exp(b, b.fsub(f32(0.0), x2)))
    large = b.call(copysign, [b.fsub(f32(1.0), tail), x])
    return b.select(b.fcmp_ordered("<", ax, f32(1.0)), small, large)


def emit_tanh(kb: KernelBuilder, u: ir.Value) -> ir.Value:
    """tanh(u) = 1 - 2 / (exp(2u) + 1): exp overflowing to inf still gives exactly 1."""
    b = kb.b
    e = emit_vector_exp(b, b.fmul(u, f32(2.0)))
    return b.fsub(f32(1.0), b.fdiv(f32(2.0), b.fadd(e, f32(1.0))))


def check_approximate(op: str, approximate: object) -> str:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got {approximate!r}")
    return str(approximate)


def emit_gelu(kb: KernelBuilder, x: ir.Value, approximate: str) -> ir.Value:
    """gelu(x) as straight-line code; shared with matmul's fused epilogue so both round the same way."""
    b = kb.b
    if approximate == "tanh":
        inner = b.fmul(x, b.fmul(b.fmul(x, x), f32(0.044715)))
        u = b.fmul(f32(math.sqrt(2.0 / math.pi)), b.fadd(x, inner))
        s = emit_tanh(kb, u)
    else:
        s = emit_erf(kb, b.fmul(x, f32(math.sqrt(0.5))))
    return b.fmul(b.fmul(x, f32(0.5)), b.fadd(f32(1.0), s))


def lower_gelu(spec: KernelSpec) -> KernelIR:
    approximate = check_approximate("gelu", spec.attrs.get("approximate", "none"))
    return lower_unary(spec, lambda kb, x: emit_gelu(kb, x, approximate))


def gelu_reference(x: np.ndarray, approximate: str) -> np.ndarray:
    """gelu in float64: 0.5 x (1 + erf(x / sqrt 2)), or with the tanh approximation."""
    x = x.astype(np.float64)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


@register
class Gelu(KernelOp):
    """gelu(x), 8 FLOPs an element; SRAM: the input and output tiles; traffic: read and write each once (as a
    matmul's epilogue it is computed on the way through and adds nothing, see matmul.py)."""

    name = "gelu"
    flops_per_element = 8

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_gelu(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        return gelu_reference(inputs[0], attrs.get("approximate", "none"))

    def epilogue(self, graph: Graph, node: Node, position: int) -> tuple[dict[str, Any], str | None] | None:
        return {"epilogue": "gelu", "approximate": node.attrs.get("approximate", "none")}, None
