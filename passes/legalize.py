"""legalize: rewrite ATen nodes into the ops of the op table (wsc/ops/), recording FLOPs and bytes.

Each ATen op has one rule, registered with `@legalizes(...)`; a rule emits wsc nodes and returns the node
that now holds the ATen node's value. Ops with no rule are the unsupported ones: the error names the op, the
user's line that produced it, and `wsc ops` (which prints this registry). Shapes are copied from the captured
nodes: a rule computes the shapes of only the intermediate nodes it invents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import SOURCE_OPS, Graph, Node, Ref
from wsc.core.program import Program

_RULES: dict[str, Callable[[Rewriter, Node], str]] = {}

def legalizes(*aten_ops: str):
    def register(rule):
        for op in aten_ops:
            _RULES[op] = rule
        return rule

    return register


def supported_aten_ops() -> list[str]:
    return sorted(_RULES)


def node_flops(op: str, shape: tuple[int, ...], in_shapes: list[tuple[int, ...]], attrs: dict) -> int:
    """The op table's FLOP count for one node."""
    return ops.get(op).flops(shape, in_shapes, attrs)


class Rewriter:
    """Builds the legal graph; `emit` names, costs and attributes each new node to its ATen origin."""

    def __init__(self, source: Graph, weights: Mapping[str, Any] | None = None, fused_attention: bool = True):
        self.source = source
        self.fused_attention = fused_attention
        self.weights = weights  # store key -> tensor, for values a rule must know (a mask buffer)
        self.out = Graph()
        self.value: dict[str, str] = {}  # ATen node name -> wsc node holding its value
        self.origin: Node | None = None
        self.count = 0

    def emit(self, op: str, inputs: list[str], shape, dtype: str | None = None, final=False, **attrs) -> str:
        origin = self.origin
        assert origin is not None
        name = origin.name if final else f"{origin.name}_{op}{self.count}"
        self.count += 1
        in_nodes = [self.out[i] for i in inputs]
        shape = tuple(int(d) for d in shape)
        node = Node(name, op, tuple(inputs), shape, dtype or origin.dtype, attrs, module=origin.module,
                    source=origin.source)
        if op not in SOURCE_OPS:
            node.flops = node_flops(op, shape, [n.shape for n in in_nodes], attrs)
            node.bytes = ops.get(op).bytes_moved(in_nodes, node)
        self.out.add(node)
        return name

    def const(self, value: np.ndarray) -> str:
        value = np.asarray(value, order="C")  # not ascontiguousarray, which makes a 0-d value 1-d
        dtype = "int64" if value.dtype.kind in "iu" else "float32"
        return self.emit("const", [], value.shape, dtype, value=value.astype(dtype))

    def arg(self, node: Node, index: int, name: str, default: Any = None) -> Any:
        args, kwargs = node.attrs.get("args", ()), node.attrs.get("kwargs", {})
        value = args[index] if index < len(args) else kwargs.get(name, default)
        return self.value[value.name] if isinstance(value, Ref) else value

    def shape(self, name: str) -> tuple[int, ...]:
        return self.out[name].shape

    def unsupported(self, node: Node, why: str) -> WscError:
        where = f" at {node.source}" if node.source else ""
        return WscError(f"unsupported use of {node.op}{where}: {why}; `wsc ops` lists what is supported")


@dataclass(frozen=True)
class Legalize:
    """`fused_attention`: attention as one kernel that never stores its scores (else three: scores, softmax,
    weighted sum, as a model that spells attention out by hand gets anyway)."""

    name: ClassVar[str] = "legalize"
    fused_attention: bool = True

    def __call__(self, program: Program) -> Program:
        return replace(program, graph=self.run(program.graph, program.weights))

    def run(self, graph: Graph, weights: Mapping[str, Any] | None = None) -> Graph:
        rw = Rewriter(graph, weights, self.fused_attention)
        for node in graph:
            rw.origin, rw.count = node, 0
            if node.op in SOURCE_OPS:
                rw.out.add(Node(node.name, node.op, (), node.shape, node.dtype, dict(node.attrs),
                                module=node.module, source=node.source))
                rw.value[node.name] = node.name
                continue
            if node.attrs.get("multi_output") and "index" not in node.attrs:
                continue  # legalised element by element, through the nodes that read it
            rule = _RULES.get(node.op)
            if rule is None:
                where = f" at {node.source}" if node.source else ""
                raise WscError(f"unsupported op {node.op}{where}; `wsc ops` lists the supported ops")
            rw.value[node.name] = rule(rw, node)
        rw.out.outputs = [rw.value[o] for o in graph.outputs]
        return _drop_dead(rw.out)


def _drop_dead(graph: Graph) -> Graph:
    live = set(graph.outputs)
    for node in reversed(list(graph)):
        if node.name in live:
            live.update(node.inputs)
    dead = [n.name for n in graph if n.name not in live]
    graph.g.remove_nodes_from(dead)
    return graph


# ----------------------------------------------------------------------------------------------- kernels


@legalizes("aten.linear.default")
def _linear(rw: Rewriter, node: Node) -> str:
    x, w, b = rw.arg(node, 0, "input"), rw.arg(node, 1, "weight"), rw.arg(node, 2, "bias")
    if len(rw.shape(w)) != 2:
        raise rw.unsupported(node, f"weight of rank {len(rw.shape(w))}")
    inputs = [x, w] + ([b] if b is not None else [])
    return rw.emit("matmul", inputs, node.shape, final=True, bias=b is not None)


@legalizes("aten.addmm.default")
def _addmm(rw: Rewriter, node: Node) -> str:
    """bias + x @ w, as Hugging Face's GPT-2 Conv1D computes it (w stored [K, N])."""
    bias, x, w = rw.arg(node, 0, "self"), rw.arg(node, 1, "mat1"), rw.arg(node, 2, "mat2")
    if rw.arg(node, 3, "beta", 1) != 1 or rw.arg(node, 4, "alpha", 1) != 1 or rw.shape(bias) != node.shape[-1:]:
        raise rw.unsupported(node, "addmm with scaling factors or a bias that is not one row")
    k, n = rw.shape(w)
    w_t = rw.emit("permute", [w], [n, k], dims=[1, 0])
    return rw.emit("matmul", [x, w_t, bias], node.shape, final=True, bias=True)


@legalizes("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(rw: Rewriter, node: Node) -> str:
    a, b = rw.arg(node, 0, "self"), rw.arg(node, 1, "other")
    a_shape, b_shape = rw.shape(a), rw.shape(b)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise rw.unsupported(node, "matrix-vector products (an operand of rank 1)")
    if len(b_shape) > 2 and (len(b_shape) != len(a_shape) or b_shape[:-2] != a_shape[:-2]):
        raise rw.unsupported(node, f"batch broadcasting between {a_shape} and {b_shape}")
    # The kernel reads its second operand transposed ([N, K]): K is contiguous for both operands.
    dims = list(range(len(b_shape)))
    dims[-1], dims[-2] = dims[-2], dims[-1]
    bt = rw.emit("permute", [b], [b_shape[d] for d in dims], dims=dims)
    return rw.emit("matmul", [a, bt], node.shape, final=True, bias=False)


@legalizes("aten.layer_norm.default")
def _layer_norm(rw: Rewriter, node: Node) -> str:
    x, normalized = rw.arg(node, 0, "input"), rw.arg(node, 1, "normalized_shape")
    w, b, eps = rw.arg(node, 2, "weight"), rw.arg(node, 3, "bias"), rw.arg(node, 4, "eps", 1e-5)
    if len(normalized) != 1:
        raise rw.unsupported(node, "normalisation over more than the last dimension")
    d = normalized[0]
    w = w if w is not None else rw.const(np.ones(d, np.float32))
    b = b if b is not None else rw.const(np.zeros(d, np.float32))
    return rw.emit("layernorm", [x, w, b], node.shape, final=True, eps=float(eps))


@legalizes("aten.gelu.default")
def _gelu(rw: Rewriter, node: Node) -> str:
    x, approximate = rw.arg(node, 0, "self"), rw.arg(node, 1, "approximate", "none")
    return rw.emit("gelu", [x], node.shape, final=True, approximate=approximate)


@legalizes("aten.relu.default")
def _relu(rw: Rewriter, node: Node) -> str:
    return rw.emit("relu", [rw.arg(node, 0, "self")], node.shape, final=True)


@legalizes("aten.softmax.int", "aten._softmax.default")
def _softmax(rw: Rewriter, node: Node) -> str:
    x, dim = rw.arg(node, 0, "self"), rw.arg(node, 1, "dim")
    rank = len(rw.shape(x))
    if dim % rank != rank - 1:
        raise rw.unsupported(node, f"softmax over dimension {dim} (only the last dimension is supported)")
    rows = int(np.prod(rw.shape(x)[:-1]))
    return rw.emit("softmax", [x], node.shape, final=True, scale=1.0, causal=False, group_rows=rows)


@legalizes("aten.scaled_dot_product_attention.default")
def _attention(rw: Rewriter, node: Node) -> str:
    """softmax(q k^T * scale, causal) v: one fused kernel whose PEs hold the queries while keys and values
    stream past (no scores stored), or the three kernels scores, softmax, weighted sum.

    The kernels' causal rule is query i sees key j <= i + diagonal; their default diagonal s_k - s_q is what
    a causal mask buffer `tril(k=s_k-s_q)` means, so `diagonal` is set only when it differs: 0 for
    `is_causal=True` (PyTorch aligns it top-left), d for a mask that is `tril(k=d)`. A query that sees no
    key (d < 0) gives 0, as PyTorch does."""
    q, k, v = (rw.arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
    if rw.arg(node, 4, "dropout_p", 0.0):
        raise rw.unsupported(node, "attention dropout (compile the model in eval mode)")
    is_causal, scale = bool(rw.arg(node, 5, "is_causal", False)), rw.arg(node, 6, "scale")
    *batch, s_q, d = rw.shape(q)
    s_k = rw.shape(k)[-2]
    mask = rw.arg(node, 3, "attn_mask")
    if mask is not None and is_causal:
        raise rw.unsupported(node, "both an attn_mask and is_causal=True (PyTorch refuses them together)")
    diagonal = 0 if is_causal else _mask_diagonal(rw, node, mask, s_q, s_k) if mask is not None else None
    if rw.shape(k)[:-2] != tuple(batch) or rw.shape(v)[:-2] != tuple(batch):
        raise rw.unsupported(node, "grouped or broadcast key/value heads")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(d)
    attrs: dict[str, Any] = {"scale": scale, "causal": diagonal is not None, "group_rows": s_q}
    if diagonal is not None and (diagonal != s_k - s_q or s_k < s_q):
        attrs["diagonal"] = diagonal  # the kernels refuse the default when it hides every key from query 0
    if rw.fused_attention:
        return rw.emit("attention", [q, k, v], node.shape, final=True, **attrs)
    scores = rw.emit("matmul", [q, k], [*batch, s_q, s_k], bias=False)
    probs = rw.emit("softmax", [scores], [*batch, s_q, s_k], **attrs)
    dims = list(range(len(batch) + 2))
    dims[-1], dims[-2] = dims[-2], dims[-1]
    v_t = rw.emit("permute", [v], [*batch, rw.shape(v)[-1], s_k], dims=dims)
    return rw.emit("matmul", [probs, v_t], node.shape, final=True, bias=False)


# Additive mask entries at or below this hide their key as -inf does (exp underflows to 0 in float32) in a row
# that sees any key; the models' finite "minus infinity" (-1e4, -1e9, float32's min) are all below it.
_MASKED = -1e4


def _mask_diagonal(rw: Rewriter, node: Node, mask: str, s_q: int, s_k: int) -> int | None:
    """The diagonal d of an attention mask known at compile time (a buffer or a folded mask computation) that
    is the causal pattern `tril(ones(s_q, s_k), k=d)` in every head: query i sees key j <= i + d. None when the
    mask hides nothing. Any other mask is not supported yet."""
    source = rw.out[mask]
    known = rw.weights.get(source.attrs.get("key", "")) if rw.weights is not None else None
    if source.op == "param" and known is not None and not known.is_meta:
        value = known.detach().cpu().numpy()
    elif source.op == "const":
        value = np.asarray(source.attrs["value"])
    else:
        raise rw.unsupported(node, "an attn_mask computed from the inputs (use is_causal=True)")
    value = np.atleast_1d(value)  # a 0-d mask holds for every query and key
    if value.dtype == np.bool_:
        allowed = value
    else:
        allowed = value == 0
        if not ((value <= _MASKED) | allowed).all():
            raise rw.unsupported(node, "an additive attn_mask with values other than 0 and -inf (a score bias)")
        if ((~allowed).all(axis=-1) & (value != -np.inf).any(axis=-1)).any():
            # PyTorch spreads such a row over its finite entries; the kernels give a row that sees no key 0.
            raise rw.unsupported(node, "an additive attn_mask that hides a whole row with finite values")
    try:
        heads = np.broadcast_to(allowed, np.broadcast_shapes(allowed.shape, (s_q, s_k))).reshape(-1, s_q, s_k)
    except ValueError:
        raise rw.unsupported(node, f"an attn_mask of shape {value.shape} for {s_q} queries and {s_k} keys") from None
    pattern = heads[0]
    if (heads != pattern).any():
        raise rw.unsupported(node, "an attn_mask that differs between heads or batch rows (padding masks are not "
                                   "supported yet)")
    if pattern.all():
        return None
    rows, cols = np.nonzero(pattern)
    diagonal = int((cols - rows).max()) if rows.size else -s_q  # the highest diagonal the mask keeps
    if (pattern != np.tril(np.ones((s_q, s_k), dtype=bool), k=diagonal)).any():
        raise rw.unsupported(node, "an attn_mask other than a causal one (tril); padding masks are not supported "
                                   "yet")
    return diagonal


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


@legalizes("aten.embedding.default")
def _embedding(rw: Rewriter, node: Node) -> str:
    weight, ids = rw.arg(node, 0, "weight"), rw.arg(node, 1, "indices")
    return rw.emit("embedding", [weight, ids], node.shape, final=True)


# ------------------------------------------------------------------------------------- layout and values


@legalizes("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
           "aten.unsqueeze.default", "aten.squeeze.dim", "aten.flatten.using_ints")
def _reshape(rw: Rewriter, node: Node) -> str:
    return rw.emit("reshape", [rw.arg(node, 0, "self")], node.shape, final=True)


@legalizes("aten.transpose.int", "aten.permute.default", "aten.t.default")
def _permute(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    rank = len(rw.shape(x))
    if node.op == "aten.permute.default":
        dims = [d % rank for d in rw.arg(node, 1, "dims")]
    else:
        d0, d1 = (rw.arg(node, 1, "dim0", 0), rw.arg(node, 2, "dim1", 1)) if rank > 1 else (0, 0)
        dims = list(range(rank))
        dims[d0 % rank], dims[d1 % rank] = dims[d1 % rank], dims[d0 % rank]
    return rw.emit("permute", [x], node.shape, final=True, dims=dims)


@legalizes("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default")
def _split(rw: Rewriter, node: Node) -> str:
    x, size = rw.arg(node, 0, "self"), rw.arg(node, 1, "split_size")
    dim = rw.arg(node, 2, "dim", 0) % len(rw.shape(x))
    extent, index = rw.shape(x)[dim], node.attrs["index"]
    if node.op == "aten.chunk.default":
        size = math.ceil(extent / size)
    sizes = list(size) if isinstance(size, (list, tuple)) else [size] * math.ceil(extent / size)
    start = sum(sizes[:index])
    return rw.emit("slice", [x], node.shape, final=True, dim=dim, start=start, end=start + node.shape[dim])


@legalizes("aten.slice.Tensor")
def _slice(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    dim = rw.arg(node, 1, "dim", 0) % len(rw.shape(x))
    if rw.arg(node, 4, "step", 1) != 1:
        raise rw.unsupported(node, "strided slices")
    start = rw.arg(node, 2, "start", 0) or 0
    start = start + rw.shape(x)[dim] if start < 0 else min(start, rw.shape(x)[dim])
    return rw.emit("slice", [x], node.shape, final=True, dim=dim, start=start, end=start + node.shape[dim])


@legalizes("aten.alias.default", "aten.clone.default", "aten.contiguous.default", "aten.detach.default",
           "aten.lift_fresh_copy.default", "aten._assert_tensor_metadata.default")
def _identity(rw: Rewriter, node: Node) -> str:
    return rw.arg(node, 0, "self")


@legalizes("aten.to.dtype_layout", "aten.to.dtype", "aten._to_copy.default", "aten.type_as.default")
def _cast(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    if rw.out[x].dtype != node.dtype:
        raise rw.unsupported(node, f"a cast from {rw.out[x].dtype} to {node.dtype} (compile in one dtype)")
    return x


@legalizes("aten.expand.default")
def _expand(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    if rw.shape(x) != node.shape:
        raise rw.unsupported(node, f"expanding {rw.shape(x)} to {node.shape} outside an elementwise op")
    return x


@legalizes("aten.dropout.default")
def _dropout(rw: Rewriter, node: Node) -> str:
    if rw.arg(node, 2, "train", False) and rw.arg(node, 1, "p", 0.0) > 0:
        raise rw.unsupported(node, "dropout in training mode (call model.eval() first)")
    return rw.arg(node, 0, "input")


@legalizes("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(rw: Rewriter, node: Node) -> str:
    args = [rw.arg(node, i, n) for i, n in enumerate(("start", "end", "step"))]
    numbers = [a for a in args if isinstance(a, (int, float))]
    value = np.arange(*numbers).astype("int64" if node.dtype == "int64" else "float32")
    return rw.emit("const", [], node.shape, node.dtype, final=True, value=value)
