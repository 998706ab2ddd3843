"""The rule for scaled_dot_product_attention, and what it reads of an attention mask known at compile time."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes


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
