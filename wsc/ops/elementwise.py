"""Element-wise kernels of one to three operands, each broadcast over the output's leading rows: add, sub, mul,
div, maximum, minimum, pow of two tensors, the comparisons, the logical ops and where.

The output is viewed as [R, C]. Operand k is viewed as [Rk, Ck] with R % Rk == 0 and Ck in {1, C}, and read at
(r % Rk, c % Ck): a full tensor, a row repeated over the rows (a bias), one value per row, a scalar, on either
side of the op. That is the family's one code shape; legalize brings every other broadcast torch allows to it
with layout ops. An operand is float32, or bool (one byte an element: a mask the model takes as input) where
attrs["kinds"] says so. Every output is float32; a comparison's true is 1.0.

One FLOP an element (pow and rounded division cost more). SRAM: a tile per tensor operand and the output tile;
traffic: each operand as the kernel indexes it (a full tile, one value per row, or a scalar in a register), the
output tile written once. These are the KernelOp defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.ops.base import KernelOp, Shape, output_view, register
from wsc.ops.codegen import (
    KernelBuilder,
    KernelIR,
    KernelSpec,
    f32,
    for_range,
    i64,
    load_at,
    store_at,
)

# emit(kb, operands, attrs) -> the output element, from the operands' elements as float32 (a bool as 0.0 or 1.0).
Emit = Callable[[KernelBuilder, Sequence[ir.Value], Mapping[str, Any]], ir.Value]
KINDS = ("f32", "bool")


def operand_view(shape: Shape, out: Shape) -> tuple[int, int]:
    """An operand's [Rk, Ck]: its shape padded with leading 1s to the output's rank, folded to two dims."""
    padded = (1,) * (max(len(out), 1) - len(shape)) + tuple(shape)
    return math.prod(padded[:-1]), padded[-1]


def operand_kinds(spec: KernelSpec) -> tuple[str, ...]:
    kinds = tuple(spec.attrs.get("kinds", ("f32",) * len(spec.in_shapes)))
    if len(kinds) != len(spec.in_shapes) or any(k not in KINDS for k in kinds):
        raise ValueError(f"{spec.op}: kinds {kinds} must give one of {KINDS} for each of {len(spec.in_shapes)} inputs")
    return kinds


def _load(b: ir.IRBuilder, kind: str, ptr: ir.Value, index: ir.Value) -> ir.Value:
    value = load_at(b, ptr, index)
    if kind == "bool":
        return b.select(b.icmp_unsigned("!=", value, ir.Constant(value.type, 0)), f32(1.0), f32(0.0))
    return value


def lower_elementwise(spec: KernelSpec, arity: int, emit: Emit) -> KernelIR:
    """out[r, c] = emit(operand k at (r % Rk, c % Ck) for each k) over the tiles."""
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != arity or any(len(s) != 2 for s in spec.in_shapes):
        raise ValueError(f"{spec.op}: expected out [R, C] and {arity} inputs [Rk, Ck]; got {spec}")
    rows, cols = spec.out_shape
    for rk, ck in spec.in_shapes:
        if (rows % rk if rk else rows) or ck not in (1, cols):
            raise ValueError(f"{spec.op}: an input of shape {(rk, ck)} does not broadcast to {(rows, cols)} "
                             "(rows must divide R, columns be 1 or C)")
    kinds = operand_kinds(spec)
    kb = KernelBuilder(spec, kinds)
    b = kb.b
    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            out_base = b.mul(r, i64(cols))
            reads = []  # per operand: (pointer, kind, row base, the row's one value when Ck is 1)
            for ptr, kind, (rk, ck) in zip(kb.inputs, kinds, spec.in_shapes, strict=True):
                row = r if rk == rows else i64(0) if rk == 1 else b.urem(r, i64(rk))
                base = b.mul(row, i64(ck))
                reads.append((ptr, kind, base, _load(b, kind, ptr, base) if ck == 1 else None))
            with for_range(b, c0, c1, "c") as c:
                values = [held if held is not None else _load(b, kind, ptr, b.add(base, c))
                          for ptr, kind, base, held in reads]
                store_at(b, emit(kb, values, spec.attrs), kb.out, b.add(out_base, c))
    return kb.finish()


def spread(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """An operand [Rk, Ck] as the kernels read it at every element of [rows, cols], in float64."""
    repeated = x.astype(np.float64)[np.arange(rows) % max(x.shape[0], 1)]
    return np.broadcast_to(repeated, (rows, cols))


class Elementwise(KernelOp):
    """An element-wise op of `arity` operands in the family's broadcast form (see the module)."""

    arity: ClassVar[int] = 2
    flops_per_element = 1

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        return output_view(node.shape), [operand_view(graph[i].shape, node.shape) for i in node.inputs]

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_elementwise(spec, self.arity, self.emit)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        rows, cols = out_shape
        with np.errstate(all="ignore"):  # 0/0, inf - inf, overflow to inf: IEEE results, as torch gives them
            return np.asarray(self.combine([spread(x, rows, cols) for x in inputs], attrs)).astype(np.float32)

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        """The output element in LLVM IR."""
        raise NotImplementedError

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        """The output in numpy, from the operands spread to the output's shape (float64)."""
        raise NotImplementedError


def _fma(kb: KernelBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    return kb.b.call(kb.intrinsic("llvm.fma", 3), [x, y, z])


# ------------------------------------------------------------------------------------------- arithmetic


@register
class Add(Elementwise):
    """a + alpha * b (alpha 1 unless attrs say otherwise). With an alpha, one fused multiply-add, as torch's
    vectorised add computes it."""

    name = "add"

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        a, b = xs
        alpha = attrs.get("alpha", 1)
        return kb.b.fadd(a, b) if alpha == 1 else _fma(kb, b, f32(alpha), a)

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        a, b = xs
        return a + np.float32(attrs.get("alpha", 1)) * b

    def epilogue(self, graph: Graph, node: Node, position: int) -> tuple[dict[str, Any], str | None] | None:
        """A residual add: the kernel feeding one operand adds the other, both of the output's full shape and
        float32 (a broadcast operand or an alpha is not the residual epilogue's arithmetic)."""
        if node.attrs.get("alpha", 1) != 1 or "kinds" in node.attrs:
            return None
        if any(graph[i].shape != node.shape for i in node.inputs):
            return None
        return {"residual": True}, node.inputs[1 - position]


@register
class Sub(Elementwise):
    """a - alpha * b (alpha 1 unless attrs say otherwise), with an alpha one fused multiply-add as in torch."""

    name = "sub"

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        a, b = xs
        alpha = attrs.get("alpha", 1)
        return kb.b.fsub(a, b) if alpha == 1 else _fma(kb, b, f32(-alpha), a)

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        a, b = xs
        return a - np.float32(attrs.get("alpha", 1)) * b


@register
class Mul(Elementwise):
    name = "mul"

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        return kb.b.fmul(*xs)

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return xs[0] * xs[1]


ROUNDINGS = (None, "trunc", "floor")


@register
class Div(Elementwise):
    """a / b; attrs["rounding"] "trunc" rounds the quotient toward zero, "floor" toward -inf as torch does
    (Python's floor division: from the remainder, exact where a / b would round to the wrong integer)."""

    name = "div"

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        # floor: the remainder, its correction and the rounding, about eight operations.
        per_element = {None: 1, "trunc": 2, "floor": 8}[attrs.get("rounding")]
        return per_element * math.prod(out_shape)

    def lower(self, spec: KernelSpec) -> KernelIR:
        if spec.attrs.get("rounding") not in ROUNDINGS:
            raise ValueError(f"div: rounding {spec.attrs.get('rounding')!r} is not one of {ROUNDINGS}")
        return super().lower(spec)

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        a, b = xs
        rounding = attrs.get("rounding")
        if rounding == "trunc":
            return kb.b.call(kb.intrinsic("llvm.trunc"), [kb.b.fdiv(a, b)])
        if rounding == "floor":
            return _floor_divide(kb, a, b)
        return kb.b.fdiv(a, b)

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        # Rounded quotients depend on float32's own rounding of a / b and of the remainder: computed in float32.
        a, b = (x.astype(np.float32) for x in xs)
        rounding = attrs.get("rounding")
        if rounding == "trunc":
            return np.trunc(a / b)
        if rounding == "floor":
            return np.floor_divide(a, b)
        return xs[0] / xs[1]


def _floor_divide(kb: KernelBuilder, a: ir.Value, b: ir.Value) -> ir.Value:
    """torch's floor division of floats: the quotient of a - fmod(a, b), moved down by one
    where the remainder's sign is not b's, rounded to the nearest integer; a / b itself where b is 0, and a
    zero of a / b's sign where the quotient is 0."""
    bb = kb.b
    zero, one = f32(0.0), f32(1.0)
    quotient = bb.fdiv(a, b)
    # LLVM's frem is C's fmod, exact. (torch's vector code divides a itself where a / b overflows, as its vector
    # fmod is not exact there; with an exact one a - mod rounds to a in that case anyway.)
    mod = bb.frem(a, b)
    div = bb.fdiv(bb.fsub(a, mod), b)
    signs_differ = bb.xor(bb.fcmp_ordered("<", b, zero), bb.fcmp_ordered("<", mod, zero))
    div = bb.select(bb.and_(bb.fcmp_unordered("!=", mod, zero), signs_differ), bb.fsub(div, one), div)
    floor = bb.call(kb.intrinsic("llvm.floor"), [div])
    floor = bb.select(bb.fcmp_ordered(">", bb.fsub(div, floor), f32(0.5)), bb.fadd(floor, one), floor)
    floor = bb.select(bb.fcmp_ordered("==", div, zero), bb.call(kb.intrinsic("llvm.copysign", 2), [zero, quotient]),
                      floor)
    return bb.select(bb.fcmp_ordered("==", b, zero), quotient, floor)


@register
class Maximum(Elementwise):
    """The larger of a and b, NaN when either is NaN (torch.maximum); of two equal values, b (as torch's vector
    code returns it: the sign of a zero against a zero of the other sign is torch's to choose)."""

    name = "maximum"

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        return _nan_or(kb, xs, kb.b.select(kb.b.fcmp_ordered(">", *xs), *xs))

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return np.maximum(*xs)


@register
class Minimum(Elementwise):
    """The smaller of a and b, NaN when either is NaN (torch.minimum); of two equal values, b."""

    name = "minimum"

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        return _nan_or(kb, xs, kb.b.select(kb.b.fcmp_ordered("<", *xs), *xs))

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return np.minimum(*xs)


def _nan_or(kb: KernelBuilder, xs: Sequence[ir.Value], value: ir.Value) -> ir.Value:
    """`value`, or a NaN (a + b) where either operand is NaN."""
    return kb.b.select(kb.b.fcmp_unordered("uno", *xs), kb.b.fadd(*xs), value)


@register
class PowTensor(Elementwise):
    """a ** b of two tensors, as C's powf (torch's pow): a negative base to a non-integer power is NaN, 0 ** 0 and
    1 ** NaN are 1, (-0) ** 3 is -0. (A Python-number exponent or base is unary's `pow`.)"""

    name = "pow_tensor"
    flops_per_element = 17  # a log and an exp (a polynomial of about eight FLOPs each) and their product

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        return kb.b.call(kb.intrinsic("llvm.pow", 2), list(xs))

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return np.power(*xs)


# ------------------------------------------------------------------------------------------- comparisons


def _truth(kb: KernelBuilder, condition: ir.Value) -> ir.Value:
    return kb.b.select(condition, f32(1.0), f32(0.0))


def _truthy(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    """x as a truth value, as torch's logical ops read it: anything but a zero (NaN included) is true."""
    return kb.b.fcmp_unordered("!=", x, f32(0.0))


class Comparison(Elementwise):
    """a (compare) b: 1.0 where it holds, else 0.0. A NaN compares unequal to everything, itself included."""

    predicate: ClassVar[str]  # LLVM's fcmp spelling
    ordered: ClassVar[bool] = True  # False: true when either operand is NaN (only !=)

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        compare = kb.b.fcmp_ordered if self.ordered else kb.b.fcmp_unordered
        return _truth(kb, compare(self.predicate, *xs))

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return COMPARE[self.predicate](*xs).astype(np.float64)


COMPARE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
}


@register
class Eq(Comparison):
    name, predicate = "eq", "=="


@register
class Ne(Comparison):
    name, predicate, ordered = "ne", "!=", False


@register
class Lt(Comparison):
    name, predicate = "lt", "<"


@register
class Le(Comparison):
    name, predicate = "le", "<="


@register
class Gt(Comparison):
    name, predicate = "gt", ">"


@register
class Ge(Comparison):
    name, predicate = "ge", ">="


@register
class LogicalAnd(Elementwise):
    name = "logical_and"

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        return _truth(kb, kb.b.and_(*(_truthy(kb, x) for x in xs)))

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return np.logical_and(*xs).astype(np.float64)


@register
class LogicalOr(Elementwise):
    name = "logical_or"

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        return _truth(kb, kb.b.or_(*(_truthy(kb, x) for x in xs)))

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return np.logical_or(*xs).astype(np.float64)


@register
class LogicalXor(Elementwise):
    name = "logical_xor"

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        return _truth(kb, kb.b.xor(*(_truthy(kb, x) for x in xs)))

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return np.logical_xor(*xs).astype(np.float64)


@register
class LogicalNot(Elementwise):
    name = "logical_not"
    arity = 1

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        return _truth(kb, kb.b.fcmp_ordered("==", xs[0], f32(0.0)))

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return np.logical_not(xs[0]).astype(np.float64)


# ------------------------------------------------------------------------------------------------ where


@register
class Where(Elementwise):
    """where(cond, a, b): a where cond is true (not 0), else b; each of the three broadcast in the family's form.
    The chosen value is copied bit for bit (NaN, inf and -0.0 survive)."""

    name = "where"
    arity = 3

    def emit(self, kb: KernelBuilder, xs: Sequence[ir.Value], attrs: Mapping[str, Any]) -> ir.Value:
        cond, a, b = xs
        return kb.b.select(kb.b.fcmp_ordered("!=", cond, f32(0.0)), a, b)

    def combine(self, xs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        cond, a, b = xs
        return np.where(cond != 0, a, b)

