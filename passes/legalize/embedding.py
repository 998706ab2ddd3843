"""The rules for embedding lookups, max_norm included.

`nn.Embedding(max_norm=...)` is captured as `aten.embedding_renorm_(weight, ids, max_norm, norm_type)`, which
scales in place each row of the table the ids name whose p-norm exceeds max_norm by max_norm / (norm + 1e-7),
then the lookup. wsc holds no table that changes in place, so the scaling moves onto the rows the lookup returns:
exactly what a lookup of the same ids reads. Any other reader of the table would see rows renormed or not
depending on what earlier calls looked up, and is refused. A renormed row's norm is then below max_norm, so a
second renorm leaves it as it is: what eager computes does not depend on earlier calls either.
"""

from __future__ import annotations

import math

import numpy as np

from wsc.core.ir import Graph, Node, Ref
from wsc.passes.legalize import Rewriter, legalizes
from wsc.passes.legalize.linear_algebra import reduced_within

RENORM = "aten.embedding_renorm_.default"
LOOKUP = "aten.embedding.default"
# Ops whose value is their first argument itself, so that a write through them is a write to it.
ALIASES = ("aten.detach.default", "aten.alias.default", RENORM)
RENORM_EPS = 1e-7  # torch's, added to the norm before dividing


def _arg_name(node: Node, index: int, name: str) -> str | None:
    args, kwargs = node.attrs.get("args", ()), node.attrs.get("kwargs", {})
    value = args[index] if index < len(args) else kwargs.get(name)
    return value.name if isinstance(value, Ref) else None


def _root(graph: Graph, name: str) -> str:
    """The tensor `name` is a view of: followed back through the ops that return their first argument."""
    while graph[name].op in ALIASES and (first := _arg_name(graph[name], 0, "self")) is not None:
        name = first
    return name


def _views(graph: Graph, root: str) -> set[str]:
    """root and every node that is root itself, through the aliasing ops."""
    views, todo = {root}, [root]
    while todo:
        for user in graph.users(todo.pop()):
            node = graph[user]
            if node.op in ALIASES and _arg_name(node, 0, "self") in views and user not in views:
                views.add(user)
                todo.append(user)
    return views


def _renorm_of(graph: Graph, lookup: Node) -> Node | None:
    """The renorm a lookup reads the result of: the last one before it of its table's rows for its ids."""
    weight, ids = _arg_name(lookup, 0, "weight"), _arg_name(lookup, 1, "indices")
    if weight is None:
        return None
    root, found = _root(graph, weight), None
    for node in graph:
        if node.name == lookup.name:
            return found
        if (node.op == RENORM and _arg_name(node, 1, "indices") == ids
                and _root(graph, _arg_name(node, 0, "self") or "") == root):
            found = node
    return None


def _norm_type(node: Node) -> float:
    args = node.attrs.get("args", ())
    return float(args[3] if len(args) > 3 else node.attrs.get("kwargs", {}).get("norm_type", 2.0))


def _max_norm(node: Node) -> float:
    args = node.attrs.get("args", ())
    return float(args[2] if len(args) > 2 else node.attrs["kwargs"]["max_norm"])


@legalizes(RENORM, refuses="a table read other than by lookups of the renormed ids with one max_norm and "
                           "norm_type; norm_type 0 or negative")
def _renorm(rw: Rewriter, node: Node) -> str:
    """The table unchanged: its lookups, checked here to be the only readers, scale the rows they return."""
    weight = _arg_name(node, 0, "self")
    p = _norm_type(node)
    if not p > 0:
        raise rw.unsupported(node, f"norm_type {p} (a count of nonzeros, not a norm: use a positive norm_type)")
    if weight is None or rw.source[weight].dtype != "float32":
        raise rw.unsupported(node, "renorming a table that is not float32 (the kernels compute float32)")
    graph = rw.source
    root = _root(graph, weight)
    views = _views(graph, root)
    params = (_max_norm(node), p)
    for name in sorted({u for v in views for u in graph.users(v)} - views) + [o for o in graph.outputs if o in views]:
        reader = graph[name]
        renorm = _renorm_of(graph, reader) if reader.op == LOOKUP else None
        if (renorm is None or _arg_name(reader, 0, "weight") not in views
                or (_max_norm(renorm), _norm_type(renorm)) != params):
            raise rw.unsupported(node, f"{reader.op} reads the table it renorms in place (only lookups of the "
                                       "renormed ids, with one max_norm and norm_type, can be compiled)")
    return rw.value[weight]


@legalizes(LOOKUP)
def _embedding(rw: Rewriter, node: Node) -> str:
    weight, ids = rw.arg(node, 0, "weight"), rw.arg(node, 1, "indices")
    renorm = _renorm_of(rw.source, node)
    if renorm is None or not _norm_type(renorm) > 0:  # a norm_type the renorm's own rule refuses
        return rw.emit("embedding", [weight, ids], node.shape, final=True)
    return _renormed(rw, node, rw.emit("embedding", [weight, ids], node.shape), _max_norm(renorm), _norm_type(renorm))


def _renormed(rw: Rewriter, node: Node, rows: str, max_norm: float, p: float) -> str:
    """rows scaled by max_norm / (norm + 1e-7) where their p-norm exceeds max_norm, as torch renorms them."""
    shape = rw.shape(rows)
    per_row = (*shape[:-1], 1)
    last = len(shape) - 1

    def number(value: float) -> str:
        return rw.const(np.full((1,), value, np.float32))

    if p == 2:
        norm = rw.emit("sqrt", [reduced_within(rw, "sum", rw.emit("square", [rows], shape), [last], True)], per_row)
    elif p == 1:
        norm = reduced_within(rw, "sum", rw.emit("abs", [rows], shape), [last], True)
    elif math.isinf(p):
        norm = reduced_within(rw, "amax", rw.emit("abs", [rows], shape), [last], True)
    else:
        powers = rw.emit("pow", [rw.emit("abs", [rows], shape)], shape, exponent=p)
        norm = rw.emit("pow", [reduced_within(rw, "sum", powers, [last], True)], per_row, exponent=1 / p)
    over = rw.emit("gt", [norm, number(max_norm)], per_row)
    scale = rw.emit("div", [number(max_norm), rw.emit("add", [norm, number(RENORM_EPS)], per_row)], per_row)
    factor = rw.emit("where", [over, scale, number(1.0)], per_row)
    return rw.emit("mul", [rows, factor], shape, final=True)
