"""Rules for the element-wise ATen ops: activations, and binary ops under any broadcast torch allows."""

from __future__ import annotations

import numpy as np

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes


@legalizes("aten.gelu.default")
def _gelu(rw: Rewriter, node: Node) -> str:
    x, approximate = rw.arg(node, 0, "self"), rw.arg(node, 1, "approximate", "none")
    return rw.emit("gelu", [x], node.shape, final=True, approximate=approximate)


@legalizes("aten.relu.default")
def _relu(rw: Rewriter, node: Node) -> str:
    return rw.emit("relu", [rw.arg(node, 0, "self")], node.shape, final=True)


def _binary(op: str):
    """a (op) b under any broadcast torch allows. The add and mul kernels take a first operand of the output's
    shape and a second that repeats over its leading rows (`_suffix_broadcast`); other broadcasts are brought
    to that form with layout ops (`_broadcast`), and an output no operand has the shape of is first
    materialised as 1 * operand (exact, -0.0, inf and NaN included)."""

    def rule(rw: Rewriter, node: Node) -> str:
        a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "other")
        if rw.arg(node, 2, "alpha", 1) != 1:
            raise rw.unsupported(node, "add with alpha != 1")
        out = tuple(node.shape)
        scalar = (1,) if out else ()  # a Python number: one element, of no dims when the output has none
        a = a if isinstance(a, str) else rw.const(np.full(scalar, a, np.float32))
        b = b if isinstance(b, str) else rw.const(np.full(scalar, b, np.float32))
        if rw.shape(a) != out:
            a, b = b, a  # both ops commute: put the full-size operand first
        for x in (a, b):
            padded = (1,) * (len(out) - len(rw.shape(x))) + rw.shape(x)
            if len(padded) != len(out) or any(d not in (1, o) for d, o in zip(padded, out, strict=True)):
                raise rw.unsupported(node, f"{rw.shape(a)} and {rw.shape(b)} do not broadcast to {out}")
        if rw.shape(a) == out and _suffix_broadcast(rw.shape(b), out):
            return rw.emit(op, [a, b], out, final=True)
        if not out:
            # Rank 0: the kernels view every tensor as [rows, cols], so compute on one element.
            a, b = (rw.emit("reshape", [x], (1,)) for x in (a, b))
            return rw.emit("reshape", [rw.emit(op, [a, b], (1,))], out, final=True)
        if rw.shape(a) != out:
            a = _broadcast(rw, "mul", rw.const(np.ones(out, np.float32)), a, out)
        return _broadcast(rw, op, a, b, out, final=True)

    return rule


def _broadcast(rw: Rewriter, op: str, full: str, small: str, out: tuple[int, ...], final: bool = False) -> str:
    """full (op) small, full of shape `out` and small broadcasting to it in any dims. The dims small repeats
    over (except the last, which the kernels broadcast themselves) move to the front of both, which makes
    small a suffix broadcast; the result is permuted back. Moving size-1 dims keeps small's element order,
    so small only needs a reshape."""
    padded = (1,) * (len(out) - len(rw.shape(small))) + rw.shape(small)
    repeated = [i for i in range(len(out) - 1) if padded[i] == 1 and out[i] != 1]
    dims = repeated + [i for i in range(len(out)) if i not in repeated]
    if dims == list(range(len(out))):
        return rw.emit(op, [full, small], out, final=final)
    moved = [out[i] for i in dims]
    small = rw.emit("reshape", [small], [padded[i] for i in dims])
    assert _suffix_broadcast(rw.shape(small), tuple(moved)), (padded, out, dims)
    value = rw.emit(op, [rw.emit("permute", [full], moved, dims=dims), small], moved)
    return rw.emit("permute", [value], out, final=final, dims=[int(i) for i in np.argsort(dims)])


def _suffix_broadcast(small: tuple[int, ...], full: tuple[int, ...]) -> bool:
    """True when `small` repeats over `full`'s leading rows: what the add/mul kernels index as (r % Rb, c % Cb)."""
    if len(small) > len(full) or not full:
        return False
    padded = (1,) * (len(full) - len(small)) + tuple(small)
    if padded[-1] not in (1, full[-1]):
        return False
    rows, full_rows = padded[:-1], full[:-1]
    first = next((i for i, d in enumerate(rows) if d != 1), len(rows))
    return rows[first:] == full_rows[first:]


legalizes("aten.add.Tensor")(_binary("add"))
legalizes("aten.mul.Tensor")(_binary("mul"))
