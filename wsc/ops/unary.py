"""Unary element-wise ops: out = f(x), as torch computes each on float32, special values included.

Every op here reads one input of the output's shape, so the KernelOp defaults give their SRAM (the input and
output tiles), their traffic (each read once, written once), their ABI and their backward. Each op writes its
function once for LLVM (`emit`, on one float32 value) and once in float64 numpy (`evaluate`, the reference).

FLOPs: one per arithmetic operation of the function's definition, an elementary function (exp, log, sin, cos,
tanh, erf, pow, log1p, expm1) counted as one, as softmax.py counts its exp and gelu.py its erf. A PE has no
transcendental unit, so these counts are a floor; they only weigh in the estimate against the matmuls, next to
which every op here is bound by memory anyway.

exp, log, sin, cos and pow are LLVM's intrinsics, which the host compiles to calls of its C library's expf,
logf, sinf, cosf and powf (glibc's are within 1 ulp). tanh, log1p and expm1 are built from them here: tanh as an
odd polynomial near 0 (so tanh(1e-5) keeps its relative accuracy) and from exp elsewhere; log1p and expm1 with
the compensated forms of Goldberg and Kahan, a few ulp everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.ops.base import KernelOp, Shape, register
from wsc.ops.codegen import KernelBuilder, KernelIR, KernelSpec, f32, horner, lower_unary
from wsc.ops.gelu import emit_erf

Attrs = Mapping[str, Any]


def call(kb: KernelBuilder, intrinsic: str, *args: ir.Value) -> ir.Value:
    """A float32 LLVM intrinsic applied to `args`, e.g. call(kb, "llvm.exp", x)."""
    return kb.b.call(kb.intrinsic(intrinsic, len(args)), list(args))


def to_f32(value: float) -> float:
    """A Python number as torch applies it to a float32 tensor: rounded to float32 first."""
    return float(np.float32(value))


# tanh(x) = x + x^3 * P(x^2) for |x| < _TANH_SMALL: least squares fit (float64, Chebyshev nodes) of
# (tanh(x) - x) / x^3; evaluated in float32 it is within 0.75 ulp of tanh on [0, 0.625].
_TANH_SMALL = 0.625
_TANH_POLY = (
    -0.3333333101037757,
    0.13333212501733507,
    -0.053947454169691184,
    0.02170400040044043,
    -0.008184661671477132,
    0.0021489841085815527,
)


def emit_tanh(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    """tanh(x) to about 1 ulp relative everywhere, as copysign(tanh(|x|), x) (so tanh(-0.0) = -0.0). Near 0 the
    odd polynomial (1 - 2 / (exp(2x) + 1) would cancel there, as gelu.py's form does); elsewhere
    1 - 2 / (exp(2|x|) + 1), which is exactly 1 once exp overflows and NaN for NaN. Both are computed and one
    selected: straight-line code."""
    b = kb.b
    ax = call(kb, "llvm.fabs", x)
    x2 = b.fmul(x, x)
    small = b.fadd(ax, b.fmul(ax, b.fmul(x2, horner(b, x2, _TANH_POLY))))
    e = call(kb, "llvm.exp", b.fmul(ax, f32(2.0)))
    large = b.fsub(f32(1.0), b.fdiv(f32(2.0), b.fadd(e, f32(1.0))))
    return call(kb, "llvm.copysign", b.select(b.fcmp_ordered("<", ax, f32(_TANH_SMALL)), small, large), x)


def emit_log1p(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    """log(1 + x) as log(u) * (x / (u - 1)) with u = 1 + x rounded (Goldberg): the division puts back what
    rounding u lost. x itself where u rounds to 1 (-0.0 kept), inf for inf (where the form is inf / inf)."""
    b = kb.b
    u = b.fadd(f32(1.0), x)
    form = b.fmul(call(kb, "llvm.log", u), b.fdiv(x, b.fsub(u, f32(1.0))))
    exact = b.or_(b.fcmp_ordered("==", u, f32(1.0)), b.fcmp_ordered("==", u, f32(math.inf)))
    return b.select(exact, x, form)


def emit_expm1(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    """exp(x) - 1 as (u - 1) * (x / log(u)) with u = exp(x) rounded (Kahan): exact cancellation in u - 1, the
    ratio corrects u's rounding. x where u rounds to 1 (-0.0 kept), -1 once u - 1 is -1, inf once exp overflows
    (where the form is inf / inf)."""
    b = kb.b
    u = call(kb, "llvm.exp", x)
    um1 = b.fsub(u, f32(1.0))
    form = b.fmul(um1, b.fdiv(x, call(kb, "llvm.log", u)))
    exact = b.or_(b.fcmp_ordered("==", um1, f32(-1.0)), b.fcmp_ordered("==", u, f32(math.inf)))
    form = b.select(exact, um1, form)
    return b.select(b.fcmp_ordered("==", u, f32(1.0)), x, form)


def emit_sigmoid(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    """1 / (1 + exp(-x)), torch's own form: exp(-x) overflowing (x < -88.7) gives 0, never NaN."""
    b = kb.b
    return b.fdiv(f32(1.0), b.fadd(f32(1.0), call(kb, "llvm.exp", b.fneg(x))))


class Unary(KernelOp):
    """out = f(x) over the tiles; a subclass writes `emit` (LLVM, one float32 value) and `evaluate` (float64)."""

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        raise NotImplementedError

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        raise NotImplementedError

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_unary(spec, lambda kb, x: self.emit(kb, x, spec.attrs))

    def reference(self, inputs: Sequence[np.ndarray], attrs: Attrs, out_shape: Shape) -> np.ndarray:
        # Overflow, log(0), sqrt(-1): the IEEE results (inf, -inf, NaN) are the intended ones, rounding included.
        with np.errstate(all="ignore"):
            return self.evaluate(inputs[0].astype(np.float64), attrs).astype(np.float32)


@register
class Neg(Unary):
    """-x (the sign flipped, so neg(0.0) = -0.0); 1 FLOP."""

    name = "neg"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return kb.b.fneg(x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return -x


@register
class Abs(Unary):
    """|x| (the sign cleared: abs(-0.0) = 0.0); 1 FLOP."""

    name = "abs"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return call(kb, "llvm.fabs", x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.abs(x)


@register
class Exp(Unary):
    """exp(x), inf once it overflows; 1 FLOP."""

    name = "exp"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return call(kb, "llvm.exp", x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.exp(x)


@register
class Log(Unary):
    """log(x): -inf at ±0, NaN below 0; 1 FLOP."""

    name = "log"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return call(kb, "llvm.log", x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.log(x)


@register
class Log1p(Unary):
    """log(1 + x), accurate for small x (see emit_log1p); 1 FLOP."""

    name = "log1p"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return emit_log1p(kb, x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.log1p(x)


@register
class Expm1(Unary):
    """exp(x) - 1, accurate for small x (see emit_expm1); 1 FLOP."""

    name = "expm1"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return emit_expm1(kb, x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.expm1(x)


@register
class Sqrt(Unary):
    """sqrt(x), correctly rounded: sqrt(-0.0) = -0.0, NaN below 0; 1 FLOP."""

    name = "sqrt"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return call(kb, "llvm.sqrt", x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.sqrt(x)


@register
class Rsqrt(Unary):
    """1 / sqrt(x) as torch computes it (two correct roundings): inf at 0, -inf at -0.0, NaN below 0; 2 FLOPs."""

    name = "rsqrt"
    flops_per_element = 2

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return kb.b.fdiv(f32(1.0), call(kb, "llvm.sqrt", x))

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return 1.0 / np.sqrt(x)


@register
class Reciprocal(Unary):
    """1 / x: ±inf at ±0; 1 FLOP."""

    name = "reciprocal"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return kb.b.fdiv(f32(1.0), x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return 1.0 / x


@register
class Square(Unary):
    """x * x; 1 FLOP."""

    name = "square"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return kb.b.fmul(x, x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return x * x


@register
class Sin(Unary):
    """sin(x); 1 FLOP."""

    name = "sin"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return call(kb, "llvm.sin", x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.sin(x)


@register
class Cos(Unary):
    """cos(x); 1 FLOP."""

    name = "cos"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return call(kb, "llvm.cos", x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.cos(x)


@register
class Tanh(Unary):
    """tanh(x), about 1 ulp relative (see emit_tanh); 1 FLOP."""

    name = "tanh"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return emit_tanh(kb, x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.tanh(x)


@register
class Erf(Unary):
    """erf(x), gelu.py's inline form (within ~2 ulp); 1 FLOP."""

    name = "erf"
    flops_per_element = 1

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return emit_erf(kb, x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.vectorize(math.erf, otypes=[np.float64])(x)


@register
class Sigmoid(Unary):
    """1 / (1 + exp(-x)): 0 (not NaN) where exp(-x) overflows; 4 FLOPs (negate, exp, add, divide)."""

    name = "sigmoid"
    flops_per_element = 4

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        return emit_sigmoid(kb, x)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))


@register
class Silu(Unary):
    """x * sigmoid(x), as torch's x / (1 + exp(-x)): -0.0 (not NaN) where exp(-x) overflows; 4 FLOPs (negate,
    exp, add, divide)."""

    name = "silu"
    flops_per_element = 4

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        b = kb.b
        return b.fdiv(x, b.fadd(f32(1.0), call(kb, "llvm.exp", b.fneg(x))))

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return x / (1.0 + np.exp(-x))


@register
class Softplus(Unary):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold, as torch (attrs beta, threshold);
    5 FLOPs (scale, compare, exp, log1p, divide)."""

    name = "softplus"
    flops_per_element = 5

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        b = kb.b
        beta = f32(to_f32(attrs["beta"]))
        scaled = b.fmul(x, beta)
        soft = b.fdiv(emit_log1p(kb, call(kb, "llvm.exp", scaled)), beta)
        return b.select(b.fcmp_ordered(">", scaled, f32(to_f32(attrs["threshold"]))), x, soft)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        beta, threshold = to_f32(attrs["beta"]), to_f32(attrs["threshold"])
        return np.where(x * beta > threshold, x, np.log1p(np.exp(x * beta)) / beta)


@register
class LeakyRelu(Unary):
    """x where x > 0, else x * negative_slope (NaN stays NaN); 2 FLOPs (compare-select, multiply)."""

    name = "leaky_relu"
    flops_per_element = 2

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        b = kb.b
        return b.select(b.fcmp_ordered(">", x, f32(0.0)), x, b.fmul(x, f32(to_f32(attrs["negative_slope"]))))

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        return np.where(x > 0, x, x * to_f32(attrs["negative_slope"]))


@register
class Elu(Unary):
    """scale * x where x > 0, else alpha * scale * expm1(input_scale * x), as torch's elu (selu and celu are
    this with their constants); 4 FLOPs (compare-select, scale the input, expm1, scale the output)."""

    name = "elu"
    flops_per_element = 4

    @staticmethod
    def coefficients(attrs: Attrs) -> tuple[float, float, float]:
        """(alpha * scale, scale, input_scale) in float32, as torch's kernel holds them."""
        alpha, scale, input_scale = (np.float32(attrs[k]) for k in ("alpha", "scale", "input_scale"))
        return float(alpha * scale), float(scale), float(input_scale)

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        b = kb.b
        negative, positive, input_scale = self.coefficients(attrs)
        below = b.fmul(emit_expm1(kb, b.fmul(x, f32(input_scale))), f32(negative))
        return b.select(b.fcmp_ordered("<=", x, f32(0.0)), below, b.fmul(x, f32(positive)))

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        negative, positive, input_scale = self.coefficients(attrs)
        return np.where(x <= 0, np.expm1(x * input_scale) * negative, x * positive)


@register
class Clamp(Unary):
    """min(max(x, attrs["min"]), attrs["max"]), either bound optional, as torch.clamp: NaN stays NaN, a NaN
    bound makes every element NaN, min > max gives max. 1 FLOP (a compare-select) per bound."""

    name = "clamp"

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Attrs) -> int:
        return len(self.bounds(attrs)) * math.prod(out_shape)

    @staticmethod
    def bounds(attrs: Attrs) -> dict[str, float]:
        bounds = {k: to_f32(attrs[k]) for k in ("min", "max") if attrs.get(k) is not None}
        if not bounds:
            raise ValueError("clamp: needs a min or a max")
        return bounds

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        b = kb.b
        bounds = self.bounds(attrs)
        if any(math.isnan(v) for v in bounds.values()):
            return f32(math.nan)
        # Ordered compares are false for NaN, so a NaN x is kept.
        if "min" in bounds:
            x = b.select(b.fcmp_ordered("<", x, f32(bounds["min"])), f32(bounds["min"]), x)
        if "max" in bounds:
            x = b.select(b.fcmp_ordered(">", x, f32(bounds["max"])), f32(bounds["max"]), x)
        return x

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        bounds = self.bounds(attrs)
        if "min" in bounds:
            x = np.maximum(x, bounds["min"])
        if "max" in bounds:
            x = np.minimum(x, bounds["max"])
        return x


@register
class Pow(Unary):
    """x ** attrs["exponent"], or attrs["base"] ** x, as C's pow (torch's for these): a negative base gives an
    exact power with its sign for an integer exponent and NaN for any other, x ** 0 = 1 and 1 ** x = 1 even for
    NaN. 1 FLOP. (Legalize sends the exponents torch computes another way to square, sqrt, rsqrt, reciprocal.)"""

    name = "pow"
    flops_per_element = 1

    @staticmethod
    def operand(attrs: Attrs) -> tuple[str, float]:
        given = [k for k in ("exponent", "base") if attrs.get(k) is not None]
        if len(given) != 1:
            raise ValueError(f"pow: needs an exponent or a base, not {given or 'neither'}")
        return given[0], to_f32(attrs[given[0]])

    def emit(self, kb: KernelBuilder, x: ir.Value, attrs: Attrs) -> ir.Value:
        which, value = self.operand(attrs)
        base, exponent = (x, f32(value)) if which == "exponent" else (f32(value), x)
        return call(kb, "llvm.pow", base, exponent)

    def evaluate(self, x: np.ndarray, attrs: Attrs) -> np.ndarray:
        which, value = self.operand(attrs)
        return np.power(x, value) if which == "exponent" else np.power(value, x)

