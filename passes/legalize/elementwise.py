"""Rules for the element-wise ATen ops: activations, and the binary and ternary ops (arithmetic, comparisons, logical
ops, where and what is a where: masked_fill, tril, triu) under any broadcast torch allows, with tensors or Python
numbers on either side.

The kernels (wsc/ops/elementwise.py) read each operand repeated over the output's leading rows (`suffix_broadcast`).
Every other broadcast is brought to that form with layout ops (`emit_elementwise`), and an operand no order of
the dims can bring to it alongside the others is first materialised at the output's shape.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from wsc import ops
from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes

Shape = tuple[int, ...]
_AS_FLOAT: weakref.WeakKeyDictionary[Rewriter, dict[str, str]] = weakref.WeakKeyDictionary()
COMPUTED = ("float32", "bool")  # the dtypes the kernels compute (a bool as 0.0 or 1.0)
FLOAT_EXACT = 1 << 24  # integers up to this are exact in float32


@legalizes("aten.gelu.default")
def _gelu(rw: Rewriter, node: Node) -> str:
    x, approximate = rw.arg(node, 0, "self"), rw.arg(node, 1, "approximate", "none")
    return rw.emit("gelu", [x], node.shape, final=True, approximate=approximate)


@legalizes("aten.relu.default")
def _relu(rw: Rewriter, node: Node) -> str:
    return rw.emit("relu", [rw.arg(node, 0, "self")], node.shape, final=True)


# ----------------------------------------------------------------------------------------------- operands


def held_as(rw: Rewriter, name: str) -> str:
    """The dtype a value has when the runtime hands it to a kernel: kernels write float32 and the weight store
    streams float32, while a model input and a folded constant keep their own dtype, and a layout op keeps what
    it moves (numpy's promotion where it joins several: a bool joined with a float is a float)."""
    node = rw.out[name]
    if node.op == "input":
        return node.dtype
    if node.op == "const":
        return str(np.asarray(node.attrs["value"]).dtype)
    if ops.is_layout(node.op) and ops.layout_op(node.op).converts:
        return node.dtype
    if ops.is_layout(node.op):
        data = [i for i in node.inputs if rw.out[i].dtype == node.dtype] or list(node.inputs[:1])
        return str(np.result_type(*(np.dtype(held_as(rw, i)) for i in data)))
    return "float32"


def operand(rw: Rewriter, node: Node, value: Any, rank: int) -> tuple[str, str]:
    """An operand as (value name, kernel kind): a Python number becomes a float32 constant of one element (of
    no dims at rank 0); a bool or integer constant becomes float32 (exact); a tensor computed at run time must
    be held as float32 or bool."""
    if not isinstance(value, str):
        return rw.const(np.full((1,) if rank else (), value, np.float32)), "f32"
    source = rw.out[value]
    if source.op == "const":
        held = np.asarray(source.attrs["value"])
        if held.dtype != np.float32 and (held.dtype.kind == "b" or
                                         (held.dtype.kind in "iu" and np.all(np.abs(held) <= FLOAT_EXACT))):
            converted = _AS_FLOAT.setdefault(rw, {})  # once per constant: a mask every block reads is one copy
            if value not in converted:
                converted[value] = rw.const(held.astype(np.float32))
            return converted[value], "f32"
    dtype = held_as(rw, value)
    if dtype == "float32":
        return value, "f32"
    if dtype == "bool":
        return value, "bool"
    raise rw.unsupported(node, f"an operand of {dtype} (the element-wise kernels take float32 and bool tensors: "
                               "compute in float32)")


def suffix_broadcast(small: Shape, full: Shape) -> bool:
    """True when `small` repeats over `full`'s leading rows: what the kernels index as (r % Rk, c % Ck)."""
    if len(small) > len(full) or not full:
        return False
    padded = (1,) * (len(full) - len(small)) + tuple(small)
    if padded[-1] not in (1, full[-1]):
        return False
    rows, full_rows = padded[:-1], full[:-1]
    first = next((i for i, d in enumerate(rows) if d != 1), len(rows))
    return rows[first:] == full_rows[first:]


def _padded(shape: Shape, out: Shape) -> Shape:
    return (1,) * (len(out) - len(shape)) + tuple(shape)


def _repeated(shape: Shape, out: Shape) -> frozenset[int]:
    """The leading dims an operand repeats over (the last dim the kernels broadcast themselves)."""
    padded = _padded(shape, out)
    return frozenset(d for d in range(len(out) - 1) if padded[d] == 1 and out[d] != 1)


def emit_elementwise(rw: Rewriter, node: Node, op: str, values: Sequence[Any], out: Shape | None = None,
                     final: bool = True, attrs: dict[str, Any] | None = None) -> str:
    """op(*values) with `attrs` at shape `out` (the node's by default), each value a node name or a Python number
    that broadcasts to `out` as torch broadcasts.

    The dims the operands repeat over move to the front (a permute of the operands that need one, a reshape of
    the others, the result permuted back), which makes every operand a suffix broadcast, provided the sets of
    dims they repeat over nest. An operand whose set does not nest with the others' is materialised first, as
    1 * operand at the output's shape (exact: -0.0, inf and NaN included). Rank 0 computes on one element."""
    out = tuple(node.shape if out is None else out)
    attrs = attrs or {}
    names, kinds = map(list, zip(*(operand(rw, node, v, len(out)) for v in values), strict=True))
    if node.dtype not in COMPUTED:
        raise rw.unsupported(node, f"a result of {node.dtype} (the element-wise kernels compute float32 and bool: "
                                   "compute in float32)")
    for name in names:
        padded = _padded(rw.shape(name), out)
        if len(padded) != len(out) or any(d not in (1, o) for d, o in zip(padded, out, strict=True)):
            shapes = " and ".join(str(list(rw.shape(n))) for n in names)
            raise rw.unsupported(node, f"{shapes} do not broadcast to {list(out)}")
    if not out:
        flat = [rw.emit("reshape", [n], (1,), rw.out[n].dtype) for n in names]
        value = _emit(rw, op, flat, kinds, (1,), False, attrs)
        return rw.emit("reshape", [value], out, final=final)
    kept: list[frozenset[int]] = []
    for k, name in enumerate(names):
        repeated = _repeated(rw.shape(name), out)
        if all(repeated <= other or other <= repeated for other in kept):
            kept.append(repeated)
        else:
            names[k] = _in_suffix_form(rw, "mul", [name, rw.const(np.ones((1,), np.float32))], [kinds[k], "f32"],
                                       out, False, {}, "float32")
            kinds[k] = "f32"
    return _in_suffix_form(rw, op, names, kinds, out, final, attrs)


def _in_suffix_form(rw: Rewriter, op: str, names: Sequence[str], kinds: Sequence[str], out: Shape, final: bool,
                    attrs: dict[str, Any], dtype: str | None = None) -> str:
    """op(*names) at `out` with the dims the operands repeat over (sets that nest) moved to the front."""
    sets = [_repeated(rw.shape(n), out) for n in names]
    leading = sorted(range(len(out) - 1), key=lambda d: -sum(d in s for s in sets))  # stable: the rest in order
    order = [*leading, len(out) - 1]
    if order == list(range(len(out))):
        return _emit(rw, op, names, kinds, out, final, attrs, dtype)
    moved = tuple(out[d] for d in order)
    operands = []
    for name in names:
        padded, dtype_of = _padded(rw.shape(name), out), rw.out[name].dtype
        own = [d for d in range(len(out)) if padded[d] != 1]  # its dims that hold more than one element
        if [d for d in order if d in own] == own:  # their order is kept: its elements stay where they are
            name = rw.emit("reshape", [name], [padded[d] for d in order], dtype_of)
        else:
            if rw.shape(name) != padded:
                name = rw.emit("reshape", [name], padded, dtype_of)
            name = rw.emit("permute", [name], [padded[d] for d in order], dtype_of, dims=order)
        assert suffix_broadcast(rw.shape(name), moved), (rw.shape(name), moved)
        operands.append(name)
    value = _emit(rw, op, operands, kinds, moved, False, attrs, dtype)
    return rw.emit("permute", [value], out, dtype, final=final, dims=[int(i) for i in np.argsort(order)])


def _emit(rw: Rewriter, op: str, names: Sequence[str], kinds: Sequence[str], out: Shape, final: bool,
          attrs: dict[str, Any], dtype: str | None = None) -> str:
    if any(k != "f32" for k in kinds):
        attrs = {**attrs, "kinds": list(kinds)}
    return rw.emit(op, list(names), out, dtype, final=final, **attrs)


# ------------------------------------------------------------------------------------------------ arithmetic


def _alpha(rw: Rewriter, node: Node) -> dict[str, float]:
    """alpha as the kernels take it: absent when 1, else rounded to float32 as torch rounds it."""
    alpha = rw.arg(node, 2, "alpha", 1)
    return {} if alpha == 1 else {"alpha": float(np.float32(alpha))}


REFUSED = "operands or results other than float32 and bool"


def _binary(op: str, second: str = "other"):
    """The rule of an ATen op that is one kernel of two operands, `self` and `second`, in that order."""

    def rule(rw: Rewriter, node: Node) -> str:
        return emit_elementwise(rw, node, op, [rw.arg(node, 0, "self"), rw.arg(node, 1, second)])

    return rule


@legalizes("aten.add.Tensor", "aten.add.Scalar", "aten.sub.Tensor", "aten.sub.Scalar", refuses=REFUSED)
def _add_sub(rw: Rewriter, node: Node) -> str:
    op = "add" if node.op.startswith("aten.add") else "sub"
    a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "other")
    return emit_elementwise(rw, node, op, [a, b], attrs=_alpha(rw, node))


@legalizes("aten.rsub.Tensor", "aten.rsub.Scalar", refuses=REFUSED)
def _rsub(rw: Rewriter, node: Node) -> str:
    """rsub(a, b, alpha) = b - alpha * a."""
    a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "other")
    return emit_elementwise(rw, node, "sub", [b, a], attrs=_alpha(rw, node))


legalizes("aten.mul.Tensor", "aten.mul.Scalar", refuses=REFUSED)(_binary("mul"))


@legalizes("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode", "aten.div.Scalar_mode",
           "aten.floor_divide.default", refuses=REFUSED)
def _div(rw: Rewriter, node: Node) -> str:
    a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "other")
    rounding = "floor" if node.op == "aten.floor_divide.default" else rw.arg(node, 2, "rounding_mode")
    return emit_elementwise(rw, node, "div", [a, b], attrs={"rounding": rounding} if rounding else {})


legalizes("aten.maximum.default", "aten.max.other", refuses=REFUSED)(_binary("maximum"))
legalizes("aten.minimum.default", "aten.min.other", refuses=REFUSED)(_binary("minimum"))
legalizes("aten.clamp_min.Tensor", refuses=REFUSED)(_binary("maximum", "min"))
legalizes("aten.clamp_max.Tensor", refuses=REFUSED)(_binary("minimum", "max"))


@legalizes("aten.clamp.Tensor", refuses=REFUSED)
def _clamp(rw: Rewriter, node: Node) -> str:
    """clamp(x, min, max) with tensor bounds = minimum(maximum(x, min), max), as torch computes it (a NaN bound
    gives NaN; a min above the max gives the max)."""
    x, low, high = rw.arg(node, 0, "self"), rw.arg(node, 1, "min"), rw.arg(node, 2, "max")
    if low is None and high is None:
        raise rw.unsupported(node, "clamp with neither a min nor a max")
    if low is not None:
        shape = tuple(np.broadcast_shapes(rw.shape(x), rw.shape(low))) if high is not None else node.shape
        x = emit_elementwise(rw, node, "maximum", [x, low], shape, final=high is None)
    if high is not None:
        x = emit_elementwise(rw, node, "minimum", [x, high])
    return x


legalizes("aten.pow.Tensor_Tensor", refuses=REFUSED)(_binary("pow_tensor", "exponent"))


# ------------------------------------------------------------------------------------- comparisons, logic

for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    legalizes(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar", refuses=REFUSED)(_binary(_name))
legalizes("aten.logical_and.default", refuses=REFUSED)(_binary("logical_and"))
legalizes("aten.logical_or.default", refuses=REFUSED)(_binary("logical_or"))
legalizes("aten.logical_xor.default", refuses=REFUSED)(_binary("logical_xor"))


@legalizes("aten.logical_not.default", refuses=REFUSED)
def _logical_not(rw: Rewriter, node: Node) -> str:
    return emit_elementwise(rw, node, "logical_not", [rw.arg(node, 0, "self")])


def _of_bools(rw: Rewriter, node: Node, values: Sequence[Any]) -> None:
    """`&`, `|` and `~` are logical on bool tensors; on integers they work on bits, which the kernels do not."""
    dtypes = {rw.out[v].dtype if isinstance(v, str) else type(v).__name__ for v in values}
    if dtypes != {"bool"}:
        raise rw.unsupported(node, f"bitwise ops on {' and '.join(sorted(dtypes - {'bool'}))} (only on bool tensors)")


LOGICAL = {"and": "logical_and", "or": "logical_or", "xor": "logical_xor"}


@legalizes(*(f"aten.{name}.{overload}" for word in LOGICAL for name in (f"__{word}__", f"bitwise_{word}")
             for overload in ("Tensor", "Scalar")), refuses="tensors other than bool")
def _bitwise(rw: Rewriter, node: Node) -> str:
    values = [rw.arg(node, 0, "self"), rw.arg(node, 1, "other")]
    _of_bools(rw, node, values)
    word = node.op.split(".")[1].strip("_").removeprefix("bitwise_")
    return emit_elementwise(rw, node, LOGICAL[word], values)


@legalizes("aten.bitwise_not.default", refuses="tensors other than bool")
def _bitwise_not(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    _of_bools(rw, node, [x])
    return emit_elementwise(rw, node, "logical_not", [x])


# ------------------------------------------------------------------------------------------------- where


def _condition(rw: Rewriter, node: Node, cond: Any) -> str:
    if not isinstance(cond, str) or rw.out[cond].dtype != "bool":
        raise rw.unsupported(node, "a condition that is not a bool tensor")
    return cond


@legalizes("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar",
           refuses=REFUSED)
def _where_rule(rw: Rewriter, node: Node) -> str:
    cond = _condition(rw, node, rw.arg(node, 0, "condition"))
    return emit_elementwise(rw, node, "where", [cond, rw.arg(node, 1, "self"), rw.arg(node, 2, "other")])


@legalizes("aten.masked_fill.Scalar", "aten.masked_fill.Tensor", refuses=REFUSED)
def _masked_fill(rw: Rewriter, node: Node) -> str:
    """masked_fill(x, mask, value) = where(mask, value, x)."""
    x, mask, value = rw.arg(node, 0, "self"), rw.arg(node, 1, "mask"), rw.arg(node, 2, "value")
    return emit_elementwise(rw, node, "where", [_condition(rw, node, mask), value, x])


@legalizes("aten.tril.default", "aten.triu.default", refuses=REFUSED)
def _triangle(rw: Rewriter, node: Node) -> str:
    """tril and triu of a value computed at run time (of a constant, fold-constants computed it): a where with
    a constant mask over the last two dims, so what is kept is copied bit for bit (inf and NaN too)."""
    x, diagonal = rw.arg(node, 0, "self"), rw.arg(node, 1, "diagonal", 0)
    rows, cols = rw.shape(x)[-2:]
    below = np.tri(rows, cols, diagonal, dtype=bool)  # j - i <= diagonal
    mask = below if node.op == "aten.tril.default" else ~np.tri(rows, cols, diagonal - 1, dtype=bool)
    return emit_elementwise(rw, node, "where", [rw.const(mask), x, 0.0])
