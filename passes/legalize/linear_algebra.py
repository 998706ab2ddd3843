"""Rules for the matrix products: matmul in every rank combination torch allows (mm, bmm, mv, dot, outer and
inner are cases of it), linear, addmm, addmv and baddbmm with their scaling factors and a bias of any
broadcastable shape, and einsum: its diagonals strided slices, the indices one operand alone holds summed
within it, and the rest batched matmuls, two operands at a time.

Each becomes the matmul kernel, out[g] = a[g] @ b[g]^T + bias: its second operand is read transposed ([N, K]),
so a weight stored [N, K] (a Linear's, or the W of `x @ W.T`, whose two transposes cancel) is read as it is.
Batch dims broadcast as in torch. Where the second operand repeats over the last batch dims of the first, those
dims fold into the first's rows by a reshape (a weight [K, N] takes any leading dims of x); the kernel takes one
second operand for the whole batch or one per batch, so any other broadcast is materialised (`expand`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes
from wsc.passes.legalize.layout import expand, permute, reshape, swap_last
from wsc.passes.legalize.reduce import reduce_over


def _scaled(rw: Rewriter, x: str, factor: float) -> str:
    if factor == 1:
        return x
    return rw.emit("mul", [x, rw.const(np.full((1,), factor, np.float32))], rw.shape(x))


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """a and b padded with leading 1s to one rank, and the shape they broadcast to."""
    rank = max(len(a), len(b))
    pa, pb = (1,) * (rank - len(a)) + tuple(a), (1,) * (rank - len(b)) + tuple(b)
    return pa, pb, tuple(max(x, y) if min(x, y) != 0 else 0 for x, y in zip(pa, pb, strict=True))


def _product(rw: Rewriter, a: str, bt: str, shape: Sequence[int], bias: str | None = None, alpha: float = 1,
             beta: float = 1, final: bool = True) -> str:
    """alpha * a @ bt^T + beta * bias, held as `shape` (the product's elements in order). a is [..., M, K] or a
    vector [K]; bt, the second operand transposed, is [..., N, K]; bias broadcasts to `shape`."""
    shape = tuple(int(d) for d in shape)
    a = _scaled(rw, a, alpha)  # on the first operand: a weight stays the kernel's own second input
    a_shape, b_shape = rw.shape(a), rw.shape(bt)
    n, k = b_shape[-2:]
    pa, pb, batch = _broadcast(a_shape[:-2], b_shape[:-2])
    folded = len(batch)  # batch[folded:] is where bt repeats: those dims fold into a's rows
    while folded and pb[folded - 1] == 1:
        folded -= 1
    if not folded:
        operands = [a, reshape(rw, bt, (n, k))]
        out = (*a_shape[:-1], n)
    elif math.prod(a_shape) == k:
        # One row of a for every batch: the products are bt's rows times that row, the kernel's 2-D case with
        # the operands' roles swapped. The output is [..., N, 1], the same elements in order as [..., 1, N].
        operands = [bt, reshape(rw, a, (1, k))]
        out = (*b_shape[:-1], 1)
    else:
        m = 1 if len(a_shape) == 1 else a_shape[-2]
        rows = math.prod(batch[folded:]) * m
        a_rows = reshape(rw, a, (*pa[:folded], rows, k))
        operands = [expand(rw, a_rows, (*batch[:folded], rows, k)),
                    expand(rw, reshape(rw, bt, (*pb[:folded], n, k)), (*batch[:folded], n, k))]
        out = (*batch[:folded], rows, n)
    attrs = {"bias": False}
    if bias is not None and beta != 0:  # beta 0 ignores the bias, NaN and inf included, as torch does
        padded = (1,) * (len(shape) - len(rw.shape(bias))) + rw.shape(bias)
        if shape and shape[-1] == out[-1] == n and all(d == 1 for d in padded[:-1]):
            operands.append(_scaled(rw, expand(rw, reshape(rw, bias, padded[-1:]), (n,)), beta))
            attrs["bias"] = True
        else:  # a bias that varies along the rows: the kernel's residual, added after the product
            operands.append(_scaled(rw, reshape(rw, expand(rw, bias, shape), out), beta))
            attrs["residual"] = True
    product = rw.emit("matmul", operands, out, final=final and out == shape, **attrs)
    return reshape(rw, product, shape, final=final)


def _transposed(rw: Rewriter, b: str) -> str:
    """A second operand [..., K, N] as the kernel reads it, [..., N, K]; a vector [K] is one column, [1, K]."""
    rank = len(rw.shape(b))
    return reshape(rw, b, (1, *rw.shape(b))) if rank == 1 else permute(rw, b, swap_last(rank))


@legalizes("aten.matmul.default", "aten.mm.default", "aten.bmm.default", "aten.mv.default", "aten.dot.default",
           "aten.vdot.default")
def _matmul(rw: Rewriter, node: Node) -> str:
    a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "other")
    return _product(rw, a, _transposed(rw, b), node.shape)


@legalizes("aten.outer.default", "aten.ger.default")
def _outer(rw: Rewriter, node: Node) -> str:
    """a [M] times b [N]: a matmul with K = 1, exact (each element one product)."""
    a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "vec2")
    return _product(rw, reshape(rw, a, (*rw.shape(a), 1)), reshape(rw, b, (*rw.shape(b), 1)), node.shape)


@legalizes("aten.inner.default", refuses="a scalar operand")
def _inner(rw: Rewriter, node: Node) -> str:
    """The sum over the last dim of both: every row of b is a column of the product."""
    a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "other")
    if not rw.shape(a) or not rw.shape(b):
        raise rw.unsupported(node, "inner with a scalar operand (a multiplication: write a * b)")
    k = rw.shape(b)[-1]
    return _product(rw, a, reshape(rw, b, (math.prod(rw.shape(b)[:-1]), k)), node.shape)


@legalizes("aten.linear.default", refuses="weights not of rank 2")
def _linear(rw: Rewriter, node: Node) -> str:
    x, w, b = rw.arg(node, 0, "input"), rw.arg(node, 1, "weight"), rw.arg(node, 2, "bias")
    if len(rw.shape(w)) != 2:
        raise rw.unsupported(node, f"weight of rank {len(rw.shape(w))}")
    return _product(rw, x, w, node.shape, bias=b)


@legalizes("aten.addmm.default", "aten.addmv.default", "aten.baddbmm.default")
def _addmm(rw: Rewriter, node: Node) -> str:
    """beta * input + alpha * (a @ b), as Hugging Face's GPT-2 Conv1D computes its linear layers (b [K, N])."""
    bias, a = rw.arg(node, 0, "self"), rw.arg(node, 1, "mat1")
    b = rw.arg(node, 2, "mat2")
    beta, alpha = rw.arg(node, 3, "beta", 1), rw.arg(node, 4, "alpha", 1)
    return _product(rw, a, _transposed(rw, b), node.shape, bias=bias, alpha=alpha, beta=beta)


# ------------------------------------------------------------------------------------------------------ einsum

def _einsum_terms(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str]:
    """Each operand's subscripts and the output's, with an ellipsis spelled out as symbols of its own (its dims
    aligned from the right, as they broadcast) and an implicit output made explicit."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(shapes):
        raise ValueError(f"{len(inputs)} operands in the equation, {len(shapes)} given")
    spans = [len(s) - len(t.replace("...", "")) for t, s in zip(inputs, shapes, strict=True) if "..." in t]
    ellipsis = [chr(0x100 + i) for i in range(max(spans, default=0))]
    terms = []
    for term, shape in zip(inputs, shapes, strict=True):
        if "..." in term:
            span = len(shape) - len(term.replace("...", ""))
            term = term.replace("...", "".join(ellipsis[len(ellipsis) - span:]))
        terms.append(term)
    if arrow:
        return terms, rhs.replace("...", "".join(ellipsis))
    counts = Counter("".join(terms))
    return terms, "".join(ellipsis) + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ellipsis))


def reduced_within(rw: Rewriter, op: str, x: str, dims: Sequence[int], keepdim: bool = False) -> str:
    """x reduced by `op` over `dims` inside another op's rule: the reduce rules' `reduce_over`, which names its
    result after the node it computes, given a stand-in node of the reduced shape so that the rule's own
    result keeps the ATen node's name. `op` is one whose value over one element is that element (sum, amax)."""
    shape = rw.shape(x)
    dims = sorted({int(d) % len(shape) for d in dims}) if shape else []
    out = tuple(1 if d in dims else n for d, n in enumerate(shape) if keepdim or d not in dims)
    ones = [d for d in dims if shape[d] == 1]
    if ones:  # a sum, max or min over one element is that element: those dims are dropped by a reshape
        x = reshape(rw, x, [n for d, n in enumerate(shape) if d not in ones])
        dims = [d - sum(o < d for o in ones) for d in dims if d not in ones]
    if not dims:
        return reshape(rw, x, out)
    origin = rw.origin
    assert origin is not None
    rw.origin = stand_in = replace(origin, name=f"{origin.name}_{op}{rw.count}", shape=out)
    try:
        return reduce_over(rw, stand_in, op, x, list(dims))
    finally:
        rw.origin = origin


def _diagonals(rw: Rewriter, node: Node, x: str, term: str) -> tuple[str, str]:
    """x with each index its term repeats taken once, on the diagonal: those dims moved last and flattened, a
    diagonal of r dims of n is every (1 + n + ... + n^(r-1))-th element of the n^r, a strided slice."""
    for c in dict.fromkeys(term):
        at = [i for i, t in enumerate(term) if t == c]
        if len(at) == 1:
            continue
        sizes = {rw.shape(x)[i] for i in at}
        if len(sizes) != 1:
            raise rw.unsupported(node, f"einsum index {c!r} repeated over dims of sizes {sorted(sizes)}")
        n = sizes.pop()
        rest = [i for i, t in enumerate(term) if t != c]
        kept = tuple(rw.shape(x)[i] for i in rest)
        x = reshape(rw, permute(rw, x, rest + at), (*kept, n ** len(at)))
        step = sum(n ** k for k in range(len(at)))
        if n > 1:
            x = rw.emit("slice", [x], (*kept, n), dtype=rw.out[x].dtype, dim=len(kept), start=0,
                        end=(n - 1) * step + 1, step=step)
        x = reshape(rw, x, (*kept, n))
        term = "".join(term[i] for i in rest) + c
    return x, term


def _summed_out(rw: Rewriter, x: str, term: str, needed: set[str]) -> tuple[str, str]:
    """x with the indices no other operand and not the output holds summed away: a sum within the operand."""
    dims = [i for i, c in enumerate(term) if c not in needed]
    if not dims:
        return x, term
    return reduced_within(rw, "sum", x, dims), "".join(c for c in term if c in needed)


@legalizes("aten.einsum.default", refuses="an index repeated in the output, or over dims of different sizes")
def _einsum(rw: Rewriter, node: Node) -> str:
    """Each operand loses its diagonals and the indices only it holds (summed within it); one operand is then a
    permute, two are one batched matmul, and more are contracted two at a time from the left, each product
    keeping the indices a later operand or the output holds."""
    equation = rw.arg(node, 0, "equation")
    operands = [rw.value[r.name] for r in rw.arg(node, 1, "tensors")]
    terms, out = _einsum_terms(equation, [rw.shape(x) for x in operands])
    if len(set(out)) != len(out):
        raise rw.unsupported(node, f"einsum {equation!r} repeats an index in its output")
    pairs = [_diagonals(rw, node, x, t) for x, t in zip(operands, terms, strict=True)]
    x, term = pairs[0]
    if len(pairs) == 1:
        x, term = _summed_out(rw, x, term, set(out))
        return reshape(rw, permute(rw, x, [term.index(c) for c in out]), node.shape, final=True)
    for k in range(1, len(pairs)):
        later = set(out).union(*(t for _, t in pairs[k + 1:]))
        y, other = pairs[k]
        x, term = _summed_out(rw, x, term, later | set(other))
        y, other = _summed_out(rw, y, other, later | set(term))
        last = k == len(pairs) - 1
        # Kept in the order the product holds them (shared, the first's own, the second's), so none is moved.
        held = [*(c for c in term if c in other), *term, *other]
        kept = out if last else "".join(dict.fromkeys(c for c in held if c in later))
        x = _contraction(rw, (x, term), (y, other), kept, node.shape if last else None)
        term = kept
    return x


def _contraction(rw: Rewriter, first: tuple[str, str], second: tuple[str, str], out: str,
                 shape: Sequence[int] | None) -> str:
    """The einsum of two operands whose every index is in the other or in `out`, as one batched matmul; `shape`
    is the node's (the result is then its value), None for a product a later operand still multiplies."""
    (a, ta), (b, tb) = first, second
    batch = [c for c in out if c in ta and c in tb]
    rows, cols = [c for c in out if c not in tb], [c for c in out if c not in ta]
    summed = [c for c in ta if c in tb and c not in out]

    def size(c: str) -> int:
        return max(rw.shape(x)[t.index(c)] for x, t in ((a, ta), (b, tb)) if c in t)

    def matrix(x: str, term: str, kept: list[str]) -> str:
        """x as [its batch dims, the kept dims flattened, the summed dims flattened]."""
        x = permute(rw, x, [term.index(c) for c in batch + kept + summed])
        own = rw.shape(x)[:len(batch)]
        x = expand(rw, x, (*own, *(size(c) for c in kept + summed)))  # a summed dim of 1 broadcasts, as in torch
        return reshape(rw, x, (*own, math.prod(size(c) for c in kept), math.prod(size(c) for c in summed)))

    grouped = [*batch, *rows, *cols]
    order = [grouped.index(c) for c in out]
    spread = tuple(size(c) for c in grouped)
    if order == list(range(len(out))):
        return _product(rw, matrix(a, ta, rows), matrix(b, tb, cols), spread if shape is None else shape,
                        final=shape is not None)
    product = _product(rw, matrix(a, ta, rows), matrix(b, tb, cols), spread, final=False)
    return permute(rw, product, order, final=shape is not None)
