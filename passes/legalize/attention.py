"""The rule for scaled_dot_product_attention: its key/value heads as the model made them (grouped, or with a batch
of 1), and its mask in every form sdpa takes.

Grouped-query attention comes two ways: `enable_gqa=True`, or Hugging Face's `repeat_kv` spelled out before sdpa
(`x[:, :, None].expand(b, kv, g, s, d).reshape(b, kv * g, s, d)`). The rule reads the un-repeated key and value
behind such a chain on the captured graph, so the copy goes dead and the kernel reads each key/value head for the
g query heads that share it.

A mask is a boolean (True: the key is seen) or an additive float mask of any shape that broadcasts to [B, H, S_q,
S_k], known at compile time (a buffer, or a mask fold-constants computed from shapes) or computed at run time (a
padding mask from an `attention_mask` input). What of it is a causal pattern becomes the kernels' diagonal, whose
hidden keys cost nothing; the rest is an input of the fused kernel, read at its broadcast strides (a key-padding
mask [B, 1, 1, S_k] stays B * S_k values), or an add before the softmax of the unfused form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsc import ops
from wsc.core.ir import Graph, Node, Ref
from wsc.ops.attention import mask_view
from wsc.passes.legalize import Rewriter, legalizes

# Additive mask entries at least this far below their row's largest entry hide their key as -inf does: exp
# underflows to 0 in float32 beside the row's largest score (the models' finite "minus infinity", -1e4, -1e9 and
# float32's min, are all that far below a 0).
_MASKED = -1e4

# ATen ops that give their input's value under another name or shape, as far as a mask or a key is concerned.
_SAME_VALUE = ("aten.clone.default", "aten.contiguous.default", "aten.alias.default", "aten.detach.default",
               "aten.lift_fresh_copy.default", "aten.to.dtype_layout", "aten.to.dtype", "aten._to_copy.default",
               "aten.expand.default")
_RESHAPES = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints")
_BOOL_AND = ("aten.__and__.Tensor", "aten.logical_and.default", "aten.bitwise_and.Tensor", "aten.mul.Tensor")

_REFUSES = ("dropout; an attn_mask with is_causal; query heads that are not a multiple of the key/value heads; "
            "batch dims or masks broadcast over some but not all of several batch dims")


@dataclass(frozen=True)
class _Heads:
    """How the query, key and value heads line up: the query's batch dims ([*outer, heads]), its S_q and D, the
    keys' S_k, the value's Dv, the key/value heads and whether their batch is 1 (shared by every batch row)."""

    batch: tuple[int, ...]
    s_q: int
    d: int
    s_k: int
    dv: int
    kv_heads: int
    kv_outer: int

    @property
    def heads(self) -> int:
        return self.batch[-1] if self.batch else 1

    @property
    def outer(self) -> int:
        return math.prod(self.batch[:-1])

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads


@legalizes("aten.scaled_dot_product_attention.default", refuses=_REFUSES)
def _attention(rw: Rewriter, node: Node) -> str:
    """softmax(q k^T * scale + mask, causal) v: one fused kernel whose PEs hold the queries while keys, values and
    the mask stream past (no scores stored), or the kernels scores, softmax, weighted sum.

    The kernels' causal rule is query i sees key j <= i + diagonal; their default diagonal s_k - s_q is what
    a causal mask buffer `tril(k=s_k-s_q)` means, so `diagonal` is set only when it differs: 0 for
    `is_causal=True` (PyTorch aligns it top-left), d for a mask that is `tril(k=d)`. A query that sees no
    key (d < 0) gives 0, as PyTorch does."""
    q = rw.arg(node, 0, "query")
    if rw.arg(node, 4, "dropout_p", 0.0):
        raise rw.unsupported(node, "attention dropout (compile the model in eval mode)")
    is_causal, scale = bool(rw.arg(node, 5, "is_causal", False)), rw.arg(node, 6, "scale")
    if rw.arg(node, 3, "attn_mask") is not None and is_causal:
        raise rw.unsupported(node, "both an attn_mask and is_causal=True (PyTorch refuses them together)")
    k, v = _shared_heads(rw, node)
    q = _broadcast_queries(rw, node, q)
    heads = _line_up(rw, node, q, k, v)
    diagonal: int | None = 0 if is_causal else None
    mask: str | None = None
    mask_attrs: dict[str, Any] = {}
    if not is_causal and rw.arg(node, 3, "attn_mask") is not None:
        diagonal, mask, mask_attrs = _mask(rw, node, heads)
    s_q, s_k = heads.s_q, heads.s_k
    attrs: dict[str, Any] = {"scale": float(scale) if scale is not None else 1.0 / math.sqrt(heads.d),
                             "causal": diagonal is not None, "group_rows": s_q}
    if diagonal is not None and (diagonal != s_k - s_q or s_k < s_q):
        attrs["diagonal"] = diagonal  # the kernels refuse the default when it hides every key from query 0
    if rw.fused_attention:
        if heads.groups > 1:
            attrs["groups"] = heads.groups
        return rw.emit("attention", [q, k, v] + ([mask] if mask else []), node.shape, final=True, **attrs,
                       **mask_attrs)
    return _unfused(rw, node, heads, q, k, v, attrs, mask, mask_attrs)


# ----------------------------------------------------------------------------------------------- heads


def _shared_heads(rw: Rewriter, node: Node) -> tuple[str, str]:
    """The key and value, un-repeated when both come from a repeat_kv chain with the same group count."""
    key, value = _unrepeated(rw, _ref(node, 1, "key")), _unrepeated(rw, _ref(node, 2, "value"))
    if key is None or value is None or key[1] != value[1]:
        return rw.arg(node, 1, "key"), rw.arg(node, 2, "value")
    return key[0], value[0]


def _unrepeated(rw: Rewriter, ref: Ref | None) -> tuple[str, int] | None:
    """(the value before the repeat, the group count g) when `ref` is x[..., kv, None, s, d] expanded to g along
    the new dim and reshaped to kv * g heads; None otherwise."""
    if ref is None:
        return None
    merged = _through(rw.source, rw.source[ref.name])
    merged_from = _input(merged)
    if merged.op not in _RESHAPES or merged_from is None:
        return None
    expanded = _through(rw.source, rw.source[merged_from])
    expanded_from = _input(expanded)
    if expanded.op != "aten.expand.default" or expanded_from is None:
        return None
    single = rw.source[expanded_from]
    if len(expanded.shape) < 4 or len(single.shape) != len(expanded.shape):
        return None
    *outer, kv, g, s, d = expanded.shape
    *single_outer, single_kv, one, single_s, single_d = single.shape
    if tuple(merged.shape) != (*outer, kv * g, s, d) or (single_kv, one, single_s, single_d) != (kv, 1, s, d) \
            or any(o not in (1, full) for o, full in zip(single_outer, outer, strict=True)):
        return None
    return _reshape(rw, rw.value[single.name], (*single_outer, kv, s, d)), g


def _broadcast_queries(rw: Rewriter, node: Node, q: str) -> str:
    """The queries at the output's batch and heads: sdpa broadcasts them over the keys' or the mask's (queries
    of a lower rank, or a batch of 1), and the kernels hold a query row per output row, so they are materialised
    (S_q x D per head, small beside the scores)."""
    *batch, s_q, d = rw.shape(q)
    out_batch = tuple(node.shape[:-2])
    padded = _padded(tuple(batch), len(out_batch))
    if padded == out_batch or len(padded) != len(out_batch) or \
            any(b not in (1, o) for b, o in zip(padded, out_batch, strict=True)):
        return q  # as it is, or not a broadcast: _line_up says why
    return rw.emit("expand", [q], (*out_batch, s_q, d), rw.out[q].dtype)


def _line_up(rw: Rewriter, node: Node, q: str, k: str, v: str) -> _Heads:
    """The heads of q, k and v, refused unless each key/value head serves a whole group of query heads and the
    key/value batch is the query's or 1."""
    *batch, s_q, d = rw.shape(q)
    k_shape, v_shape = (_padded(rw.shape(x), len(batch) + 2) for x in (k, v))
    if k_shape[:-1] != v_shape[:-1] or k_shape[-1] != d:
        raise rw.unsupported(node, f"keys {list(rw.shape(k))} and values {list(rw.shape(v))} that do not pair up "
                                   f"for queries {list(rw.shape(q))}")
    s_k, dv = k_shape[-2], v_shape[-1]
    if tuple(node.shape) != (*batch, s_q, dv):
        raise rw.unsupported(node, f"queries {list(rw.shape(q))} broadcast to {list(node.shape)} by the keys' or "
                                   "the mask's batch or heads (give the queries that batch and those heads)")
    kv_batch = k_shape[:-2]
    kv_heads, kv_outer = (kv_batch[-1] if kv_batch else 1), math.prod(kv_batch[:-1])
    heads = _Heads(tuple(batch), s_q, d, s_k, dv, kv_heads, kv_outer)
    if heads.heads % kv_heads:
        raise rw.unsupported(node, f"{heads.heads} query heads over {kv_heads} key/value heads (not a multiple)")
    if kv_outer not in (1, heads.outer):
        raise rw.unsupported(node, f"keys and values of batch {list(kv_batch[:-1])} for queries of batch "
                                   f"{list(batch[:-1])} (a batch is the query's or 1 in each of its dims)")
    return heads


# ------------------------------------------------------------------------------------------------ masks


def _mask(rw: Rewriter, node: Node, heads: _Heads) -> tuple[int | None, str | None, dict[str, Any]]:
    """(the causal diagonal or None, the mask input the kernels still need or None, its attrs)."""
    mask = rw.arg(node, 3, "attn_mask")
    _check_broadcast(rw, node, rw.shape(mask), heads)
    known = _known(rw, mask)
    if known is not None:
        return _known_mask(rw, known, heads)
    split = _causal_factor(rw, _ref(node, 3, "attn_mask"), heads)
    diagonal, mask = split if split is not None else (None, mask)
    _check_broadcast(rw, node, rw.shape(mask), heads)
    if rw.out[mask].dtype == "bool":
        held = _held_as(rw, mask)
        return diagonal, mask, {"mask": "bool", **({"mask_kind": "f32"} if held == "float32" else {})}
    if rw.out[mask].dtype == "float32":
        return diagonal, mask, {"mask": "additive"}
    raise rw.unsupported(node, f"an attn_mask of {rw.out[mask].dtype} (sdpa takes bool or float masks)")


def _check_broadcast(rw: Rewriter, node: Node, shape: tuple[int, ...], heads: _Heads) -> None:
    """A mask of `shape` must broadcast to [*batch, s_q, s_k], and the kernels read it as [Bm, Hm, Sm, Nm]: its
    dims before the heads are all 1 or all the query's."""
    scores = (*heads.batch, heads.s_q, heads.s_k)
    padded = _padded(shape, len(scores))
    extra = padded[: len(padded) - len(scores)]
    padded = padded[len(padded) - len(scores):]
    if any(e != 1 for e in extra) or any(m not in (1, full) for m, full in zip(padded, scores, strict=True)):
        raise rw.unsupported(node, f"an attn_mask of shape {list(shape)} for scores {list(scores)}")
    if mask_view(shape)[0] not in (1, heads.outer):
        raise rw.unsupported(node, f"an attn_mask of shape {list(shape)} that broadcasts over some but not all of "
                                   f"the batch dims {list(heads.batch[:-1])}")


def _known_mask(rw: Rewriter, value: np.ndarray, heads: _Heads) -> tuple[int | None, str | None, dict[str, Any]]:
    """A mask known at compile time: the highest diagonal below which it shows any key becomes the kernels'
    causal diagonal (what lies above it is hidden in every head), and the mask is needed no further when it is
    exactly that causal pattern in every head; else it stays as an additive constant (a bool mask as 0 and
    -inf)."""
    s_q, s_k = heads.s_q, heads.s_k
    value = np.atleast_1d(value)  # a 0-d mask holds for every query and key
    if value.dtype == np.bool_:
        hidden, shown_as_zero = ~value, value
    else:
        entries = value.astype(np.float64)
        with np.errstate(invalid="ignore"):
            top = entries.max(axis=-1, keepdims=True)
            hidden = (entries == -np.inf) | (np.isfinite(top) & (entries - top <= _MASKED))
        shown_as_zero = entries == 0
    diagonal, causal = _diagonal(hidden, s_q, s_k)
    if causal and (shown_as_zero | hidden).all():
        return diagonal, None, {}
    bias = np.where(value, 0.0, -np.inf) if value.dtype == np.bool_ else value
    return diagonal, rw.const(np.asarray(bias, dtype=np.float32)), {"mask": "additive"}


def _diagonal(hidden: np.ndarray, s_q: int, s_k: int) -> tuple[int | None, bool]:
    """(the highest diagonal on which any head sees a key, or None when that hides nothing; whether the hidden
    keys are exactly those above it, in every head)."""
    per_head = np.broadcast_to(hidden, np.broadcast_shapes(hidden.shape, (s_q, s_k))).reshape(-1, s_q, s_k)
    rows, cols = np.nonzero(~per_head.all(axis=0))  # the keys some head sees
    highest = int((cols - rows).max()) if rows.size else -s_q
    causal = bool((per_head == ~np.tri(s_q, s_k, highest, dtype=bool)).all())
    return (highest if highest < s_k - 1 else None), causal


def _causal_factor(rw: Rewriter, ref: Ref | None, heads: _Heads) -> tuple[int | None, str] | None:
    """A mask computed at run time as (causal pattern known at compile time) & (mask computed at run time), or
    + for additive masks, as Hugging Face combines a causal mask with a padding mask: (the diagonal, the run-time
    factor). Exact when the known factor hides with False or -inf (a hidden key is hidden whatever the other
    factor says, unless that says +inf or NaN there, which no padding mask does)."""
    if ref is None:
        return None
    combined = _through(rw.source, rw.source[ref.name])
    bools = combined.op in _BOOL_AND and combined.dtype == "bool"
    if not (bools or (combined.op == "aten.add.Tensor" and combined.dtype == "float32")):
        return None
    left, right = _ref(combined, 0, "self"), _ref(combined, 1, "other")
    if left is None or right is None:
        return None
    a, b = rw.value[left.name], rw.value[right.name]
    for known_name, other in ((a, b), (b, a)):
        known = _known(rw, known_name)
        if known is None or _known(rw, other) is not None or rw.out[other].dtype != combined.dtype:
            continue
        known = np.atleast_1d(known)
        hidden = ~known if known.dtype == np.bool_ else known == -np.inf
        if not (hidden | (known == (True if known.dtype == np.bool_ else 0))).all():
            continue  # a finite bias, not a pattern of 0 and -inf: keep the combined mask
        diagonal, causal = _diagonal(hidden, heads.s_q, heads.s_k)
        if causal:
            return diagonal, other
    return None


def _known(rw: Rewriter, name: str) -> np.ndarray | None:
    """The value of `name` when the compiler knows it: a constant, or a buffer the model carries."""
    source = rw.out[name]
    if source.op == "const":
        return np.asarray(source.attrs["value"])
    known = rw.weights.get(source.attrs.get("key", "")) if rw.weights is not None else None
    if source.op == "param" and known is not None and not known.is_meta:
        return known.detach().cpu().numpy()
    return None


def _held_as(rw: Rewriter, name: str) -> str:
    """The dtype a value arrives in at a kernel: a model input and a constant keep theirs, layout ops move what
    they are given, and kernels (and the weight store) hand over float32 (a bool as 0.0 or 1.0)."""
    node = rw.out[name]
    while ops.is_layout(node.op) and node.inputs:
        node = rw.out[node.inputs[0]]
    if node.op == "input":
        return node.dtype
    if node.op == "const":
        return str(np.asarray(node.attrs["value"]).dtype)
    return "float32"


# ---------------------------------------------------------------------------------------------- unfused


def _unfused(rw: Rewriter, node: Node, heads: _Heads, q: str, k: str, v: str, attrs: dict[str, Any],
             mask: str | None, mask_attrs: dict[str, Any]) -> str:
    """Scores, softmax and weighted sum as matmuls and a softmax. A key/value head serves its g query heads
    through a reshape of the queries to [outer, kv_heads, g * s_q, d] (the same elements in the same order); a
    key/value batch of 1 serving several batch rows puts the heads first. A mask is added to the scaled scores
    before the softmax (a bool mask as 0 and -inf), whose `safe` form gives a row the mask hides entirely 0, as
    sdpa does."""
    batch, s_q, s_k, g, hk = heads.batch, heads.s_q, heads.s_k, heads.groups, heads.kv_heads
    outer = heads.outer
    heads_first = heads.kv_outer != outer and hk > 1  # the matmul's second operand has a batch of 1 or of the first
    score_shape = (*batch, s_q, s_k)
    lead: tuple[int, ...] = (hk, outer * g * s_q)
    shared: tuple[int, ...] = (hk,)
    if not heads_first:
        lead, shared = ((*batch[:-1], hk, g * s_q) if batch else (s_q,)), _padded(rw.shape(k), len(batch) + 2)[:-2]
    queries = _grouped(rw, q, heads, heads.d, heads_first)
    keys = _reshape(rw, k, (*shared, s_k, heads.d))
    scores = rw.emit("matmul", [queries, keys], (*lead, s_k), bias=False)
    scores = _ungrouped(rw, scores, heads, s_k, heads_first, score_shape)
    if mask is not None:
        if mask_attrs["mask"] == "bool":
            mask = rw.emit("mask_bias", [mask], rw.shape(mask), "float32",
                           **({"mask_kind": "f32"} if mask_attrs.get("mask_kind") == "f32" else {}))
        if attrs["scale"] != 1.0:
            scores = rw.emit("mul", [scores, rw.const(np.full((1,), attrs["scale"], np.float32))], score_shape)
        scores = _add(rw, scores, mask, score_shape)
        attrs = {**attrs, "scale": 1.0, "safe": True}  # a row the mask hides entirely is 0, as sdpa gives it
    probs = rw.emit("softmax", [scores], score_shape, **attrs)
    probs = _grouped(rw, probs, heads, s_k, heads_first)
    values = _reshape(rw, v, (*shared, s_k, heads.dv))
    rank = len(rw.shape(values))
    dims = [*range(rank - 2), rank - 1, rank - 2]
    values_t = rw.emit("permute", [values], [rw.shape(values)[d] for d in dims], dims=dims)
    out = rw.emit("matmul", [probs, values_t], (*lead, heads.dv), final=not heads_first and g == 1 and
                  (*lead, heads.dv) == tuple(node.shape), bias=False)
    return _ungrouped(rw, out, heads, heads.dv, heads_first, tuple(node.shape), final=True)


def _grouped(rw: Rewriter, x: str, heads: _Heads, width: int, heads_first: bool) -> str:
    """[*batch, s_q, width] as the matmuls take it: [outer, kv_heads, g * s_q, width], or with heads_first
    [kv_heads, outer * g * s_q, width]."""
    hk, rows = heads.kv_heads, heads.groups * heads.s_q
    if not heads_first:
        return _reshape(rw, x, (*heads.batch[:-1], hk, rows, width) if heads.batch else rw.shape(x))
    x = _reshape(rw, x, (heads.outer, hk, rows, width))
    x = rw.emit("permute", [x], (hk, heads.outer, rows, width), dims=[1, 0, 2, 3])
    return _reshape(rw, x, (hk, heads.outer * rows, width))


def _ungrouped(rw: Rewriter, x: str, heads: _Heads, width: int, heads_first: bool, shape: tuple[int, ...],
               final: bool = False) -> str:
    """What `_grouped` undoes: back to [*batch, s_q, width]."""
    if heads_first:
        hk, rows = heads.kv_heads, heads.groups * heads.s_q
        x = _reshape(rw, x, (hk, heads.outer, rows, width))
        x = rw.emit("permute", [x], (heads.outer, hk, rows, width), dims=[1, 0, 2, 3])
    return _reshape(rw, x, shape, final=final)


def _reshape(rw: Rewriter, x: str, shape: tuple[int, ...], final: bool = False) -> str:
    """x as `shape`, in one reshape of what x reshapes (none when x has that shape)."""
    while rw.out[x].op == "reshape":
        x = rw.out[x].inputs[0]
    if rw.shape(x) == tuple(shape):
        return x
    return rw.emit("reshape", [x], shape, rw.out[x].dtype, final=final)


def _add(rw: Rewriter, scores: str, mask: str, shape: tuple[int, ...]) -> str:
    """scores + mask, the mask broadcast to `shape`. The add kernel repeats its second operand over the leading
    rows only, so the dims the mask repeats over (but the last) move to the front of both and back after."""
    padded = _padded(rw.shape(mask), len(shape))[-len(shape):]
    first = next((i for i in range(len(shape) - 1) if padded[i] != 1), len(shape) - 1)
    if padded[first:-1] == shape[first:-1]:  # a suffix of the scores' dims, repeated over the leading rows
        return rw.emit("add", [scores, _reshape(rw, mask, padded)], shape)
    repeated = [i for i in range(len(shape) - 1) if padded[i] == 1 and shape[i] != 1]
    dims = repeated + [i for i in range(len(shape)) if i not in repeated]
    moved = tuple(shape[i] for i in dims)
    moved_scores = rw.emit("permute", [scores], moved, dims=dims)
    total = rw.emit("add", [moved_scores, _reshape(rw, mask, tuple(padded[i] for i in dims))], moved)
    return rw.emit("permute", [total], shape, dims=[int(i) for i in np.argsort(dims)])


# ----------------------------------------------------------------------------------------- the source graph


def _ref(node: Node, index: int, name: str) -> Ref | None:
    args, kwargs = node.attrs.get("args", ()), node.attrs.get("kwargs", {})
    value = args[index] if index < len(args) else kwargs.get(name)
    return value if isinstance(value, Ref) else None


def _input(node: Node) -> str | None:
    ref = _ref(node, 0, "self")
    return ref.name if ref is not None else None


def _through(graph: Graph, node: Node) -> Node:
    """The node whose value `node` is under another name: through clones, casts to its own dtype and expands to
    its own shape."""
    while node.op in _SAME_VALUE:
        inner_name = _input(node)
        inner = graph[inner_name] if inner_name is not None else None
        if inner is None or inner.dtype != node.dtype or inner.shape != node.shape:
            break
        node = inner
    return node


def _padded(shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    return (1,) * (rank - len(shape)) + tuple(shape)
