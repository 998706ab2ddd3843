"""Rules for the ops of a training graph (wsc/frontend/training.py): the forward ops AOTAutograd keeps for their
saved values, and the `*_backward` ops of PyTorch's autograd.

Each backward is a composition of the op table's kernels: linear's is already mm and sum in the graph; layer
norm's recomputes each row's statistics (the forward's layernorm kernel gives the normalised input) and is row
means and element-wise kernels; gelu's and softmax's are element-wise kernels and a row sum; attention's
recomputes the probabilities from the queries and keys (as a flash-attention backward does) and is five
matmuls, a softmax and softmax's backward; an embedding's is a matmul of the tokens' one-hot rows (nll_backward,
the one backward kernel of its own) with the output gradients. A norm's weight and bias gradients are column
sums (a permute and a row sum).

The statistics the forward ops return for their backward (layer norm's mean and 1/std, attention's log-sum-exp)
are recomputed by the backward kernels from the forward's inputs, so those outputs are only placeholders: their
rule refuses them when anything other than the backward reads them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes
from wsc.passes.legalize.attention import _attention
from wsc.passes.legalize.loss import REDUCTIONS, nll
from wsc.passes.legalize.normalization import _layer_norm

LAYER_NORM = "aten.native_layer_norm.default"
FLASH = "aten._scaled_dot_product_flash_attention_for_cpu.default"


def _read_only_by(rw: Rewriter, node: Node, reader: str) -> bool:
    users = rw.source.users(node.name)
    return node.name not in rw.source.outputs and all(rw.source[u].op == reader for u in users)


def _recomputed(rw: Rewriter, node: Node, reader: str, what: str) -> str:
    """A statistic the backward kernel recomputes: a placeholder no kernel reads (dropped with the dead)."""
    if not _read_only_by(rw, node, reader):
        raise rw.unsupported(node, f"{what} read by an op other than {reader} (only its backward may read it)")
    return rw.const(np.zeros(node.shape, np.float32))


@legalizes(LAYER_NORM, refuses="its mean or rstd read by an op other than its backward")
def _native_layer_norm(rw: Rewriter, node: Node) -> str:
    if node.attrs.get("index", 0) != 0:
        return _recomputed(rw, node, "aten.native_layer_norm_backward.default", "layer norm's statistics")
    return _layer_norm(rw, node)  # its output is layer_norm's, from the same arguments


def _rows(rw: Rewriter, x: str, d: int) -> str:
    """x folded to [rows, d]."""
    rows = math.prod(rw.shape(x)) // d
    return x if rw.shape(x) == (rows, d) else rw.emit("reshape", [x], (rows, d), rw.out[x].dtype)


def column_sum(rw: Rewriter, x: str, shape: tuple[int, ...], final: bool = True) -> str:
    """The sum over the rows of x [rows, d], in `shape` (d elements): a permute and a row sum."""
    rows, d = rw.shape(x)
    moved = rw.emit("permute", [x], (d, rows), dims=[1, 0])
    total = rw.emit("sum", [moved], (d, 1))
    return rw.emit("reshape", [total], shape, final=final)


@legalizes("aten.native_layer_norm_backward.default", refuses="a normalized_shape that is not the trailing dims")
def _layer_norm_backward(rw: Rewriter, node: Node) -> str:
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight, xhat the normalised input and
    rstd = 1 / sqrt(var + eps), each row's statistics recomputed from x; the weight's gradient is the column
    sum of dy * xhat, the bias's that of dy."""
    dy, x = rw.arg(node, 0, "grad_out"), rw.arg(node, 1, "input")
    normalized = list(rw.arg(node, 2, "normalized_shape"))
    w, index = rw.arg(node, 5, "weight"), node.attrs.get("index", 0)
    d = math.prod(normalized)
    eps = _eps_of(rw, node)
    dy2, x2 = _rows(rw, dy, d), _rows(rw, x, d)
    if index == 2:
        return column_sum(rw, dy2, node.shape)
    shape, rows = rw.shape(x2), rw.shape(x2)[0]
    # xhat: layernorm with unit scale and no shift, the forward's own kernel.
    xhat = rw.emit("layernorm", [x2, rw.const(np.ones(d, np.float32)), rw.const(np.zeros(d, np.float32))], shape,
                   eps=eps)
    if index == 1:
        return column_sum(rw, rw.emit("mul", [dy2, xhat], shape), node.shape)
    g = rw.emit("mul", [dy2, w], shape) if w is not None else dy2
    mean_g = rw.emit("mean", [g], (rows, 1))
    mean_gx = rw.emit("mean", [rw.emit("mul", [g, xhat], shape)], (rows, 1))
    var = rw.emit("var", [x2], (rows, 1), correction=0.0)
    rstd = rw.emit("rsqrt", [rw.emit("add", [var, rw.const(np.full((1,), eps, np.float32))], (rows, 1))], (rows, 1))
    centred = rw.emit("sub", [rw.emit("sub", [g, mean_g], shape), rw.emit("mul", [xhat, mean_gx], shape)], shape)
    dx = rw.emit("mul", [centred, rstd], shape)
    return rw.emit("reshape", [dx], node.shape, final=True)


def _eps_of(rw: Rewriter, node: Node) -> float:
    """The eps of the forward layer norm whose statistics the backward reads (its backward does not take it)."""
    mean = node.attrs["args"][3]
    forward = rw.source[mean.name]
    return float(forward.attrs["args"][4])


@legalizes("aten.gelu_backward.default", refuses="the tanh approximation")
def _gelu_backward(rw: Rewriter, node: Node) -> str:
    """dy * (Phi(x) + x * phi(x)): Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    dy, x = rw.arg(node, 0, "grad_output"), rw.arg(node, 1, "self")
    if rw.arg(node, 2, "approximate", "none") != "none":
        raise rw.unsupported(node, "gelu's tanh approximation in training (the exact erf form is supported)")
    d = node.shape[-1] if node.shape else 1
    dy2, x2 = _rows(rw, dy, d), _rows(rw, x, d)
    shape = rw.shape(x2)

    def number(value: float) -> str:
        return rw.const(np.full((1,), value, np.float32))

    cdf = rw.emit("mul", [rw.emit("add", [rw.emit("erf", [rw.emit("mul", [x2, number(math.sqrt(0.5))], shape)],
                                                   shape), number(1.0)], shape), number(0.5)], shape)
    pdf = rw.emit("mul", [rw.emit("exp", [rw.emit("mul", [rw.emit("mul", [x2, x2], shape), number(-0.5)], shape)],
                                  shape), number(1 / math.sqrt(2 * math.pi))], shape)
    slope = rw.emit("add", [cdf, rw.emit("mul", [x2, pdf], shape)], shape)
    return rw.emit("reshape", [rw.emit("mul", [dy2, slope], shape)], node.shape, final=True)


@legalizes("aten._log_softmax_backward_data.default", "aten._softmax_backward_data.default",
           refuses="a dim other than the last")
def _softmax_backward(rw: Rewriter, node: Node) -> str:
    """softmax: y * (dy - sum(dy * y)); log_softmax: dy - exp(y) * sum(dy), each sum over the row."""
    dy, y, dim = rw.arg(node, 0, "grad_output"), rw.arg(node, 1, "output"), rw.arg(node, 2, "dim")
    if dim % len(node.shape) != len(node.shape) - 1:
        raise rw.unsupported(node, f"dim {dim} (the backward of a softmax over the last dim only)")
    d = node.shape[-1]
    out = softmax_backward(rw, _rows(rw, dy, d), _rows(rw, y, d), log=node.op.startswith("aten._log"))
    return rw.emit("reshape", [out], node.shape, final=True)


def softmax_backward(rw: Rewriter, dy: str, y: str, log: bool) -> str:
    shape = rw.shape(dy)
    rows = shape[0]
    if log:
        total = rw.emit("sum", [dy], (rows, 1))
        return rw.emit("sub", [dy, rw.emit("mul", [rw.emit("exp", [y], shape), total], shape)], shape)
    total = rw.emit("sum", [rw.emit("mul", [dy, y], shape)], (rows, 1))
    return rw.emit("mul", [y, rw.emit("sub", [dy, total], shape)], shape)


@legalizes("aten.embedding_dense_backward.default", refuses="scale_grad_by_freq")
def _embedding_backward(rw: Rewriter, node: Node) -> str:
    """The table's gradient: each token's output gradient added into its id's row, as a matmul of the tokens'
    one-hot rows (nll_backward with a coefficient of 1; a padding id's row is left 0) with the gradients."""
    dy, ids = rw.arg(node, 0, "grad_output"), rw.arg(node, 1, "indices")
    padding_idx, by_freq = rw.arg(node, 3, "padding_idx", -1), rw.arg(node, 4, "scale_grad_by_freq", False)
    if by_freq:
        raise rw.unsupported(node, "scale_grad_by_freq (an embedding without it)")
    v, d = node.shape
    tokens = math.prod(rw.shape(ids))
    flat_ids = ids if rw.shape(ids) == (tokens,) else rw.emit("reshape", [ids], (tokens,), "int64")
    one_hot = rw.emit("nll_backward", [flat_ids, rw.const(np.ones((1,), np.float32))], (tokens, v),
                      ignore_index=int(padding_idx), classes=v)
    by_id = rw.emit("permute", [one_hot], (v, tokens), dims=[1, 0])
    grads = rw.emit("permute", [_rows(rw, dy, d)], (d, tokens), dims=[1, 0])
    return rw.emit("matmul", [by_id, grads], (v, d), final=True, bias=False)


@legalizes("aten.nll_loss_forward.default", refuses="values other than float32")
def _nll_loss_forward(rw: Rewriter, node: Node) -> str:
    x, target, weight = rw.arg(node, 0, "self"), rw.arg(node, 1, "target"), rw.arg(node, 2, "weight")
    reduction, ignore_index = rw.arg(node, 3, "reduction"), rw.arg(node, 4, "ignore_index")
    if len(rw.shape(x)) != 2:
        raise rw.unsupported(node, f"log-probabilities of shape {list(rw.shape(x))} (rows of classes, [N, C])")
    if node.attrs.get("index", 0) == 0:
        return nll(rw, node, x, target, weight, reduction, ignore_index)
    rows, classes = rw.shape(x)
    attrs = {"ignore_index": int(ignore_index), "classes": classes, "weighted": weight is not None}
    kept = rw.emit("nll_weight", [target, *([weight] if weight is not None else [])], (rows, 1), **attrs)
    total = rw.emit("sum", [rw.emit("reshape", [kept], (1, rows))], (1, 1))
    return rw.emit("reshape", [total], node.shape, final=True)


@legalizes("aten.nll_loss_backward.default", refuses="class weights; reduction none")
def _nll_loss_backward(rw: Rewriter, node: Node) -> str:
    grad, target = rw.arg(node, 0, "grad_output"), rw.arg(node, 2, "target")
    weight, reduction = rw.arg(node, 3, "weight"), REDUCTIONS.get(rw.arg(node, 4, "reduction"))
    ignore_index, total_weight = rw.arg(node, 5, "ignore_index"), rw.arg(node, 6, "total_weight")
    if weight is not None or reduction not in ("mean", "sum") or len(node.shape) != 2:
        raise rw.unsupported(node, "class weights, reduction none or unbatched log-probabilities")
    g = rw.emit("reshape", [grad], (1,))
    if reduction == "mean":
        g = rw.emit("div", [g, rw.emit("reshape", [total_weight], (1,))], (1,))
    coef = rw.emit("neg", [g], (1,))
    rows, classes = node.shape
    flat = target if rw.shape(target) == (rows,) else rw.emit("reshape", [target], (rows,), "int64")
    return rw.emit("nll_backward", [flat, coef], node.shape, final=True, ignore_index=int(ignore_index),
                   classes=classes)


@legalizes("aten.slice_backward.default", refuses="a step other than 1")
def _slice_backward(rw: Rewriter, node: Node) -> str:
    """The gradient of a slice: the slice's gradient put back in place, zeros around it (a pad)."""
    grad, sizes, dim = rw.arg(node, 0, "grad_output"), list(rw.arg(node, 1, "input_sizes")), rw.arg(node, 2, "dim")
    start, end, step = rw.arg(node, 3, "start"), rw.arg(node, 4, "end"), rw.arg(node, 5, "step")
    if step != 1:
        raise rw.unsupported(node, f"step {step} (a slice of consecutive elements)")
    dim %= len(sizes)
    start, end = slice(start, end).indices(sizes[dim])[:2]
    widths = [[0, 0] for _ in sizes]
    widths[dim] = [start, sizes[dim] - end]
    return rw.emit("pad", [grad], node.shape, final=True, widths=widths, value=0.0)


@legalizes("aten.ones_like.default", "aten.zeros_like.default")
def _filled_like(rw: Rewriter, node: Node) -> str:
    value = 1.0 if "ones" in node.op else 0.0
    return rw.const(np.full(node.shape, value, np.float32 if node.dtype == "float32" else np.int64))


# ---------------------------------------------------------------------------------------------- attention


@legalizes(FLASH, refuses="dropout, a mask; its log-sum-exp read by an op other than its backward")
def _flash_attention(rw: Rewriter, node: Node) -> str:
    if node.attrs.get("index", 0) != 0:
        return _recomputed(rw, node, FLASH.replace(".default", "_backward.default"), "attention's log-sum-exp")
    args = list(node.attrs["args"]) + [0.0, False][len(node.attrs["args"]) - 3:]
    kwargs = node.attrs.get("kwargs", {})
    sdpa_args = (args[0], args[1], args[2], kwargs.get("attn_mask"), args[3], args[4], kwargs.get("scale"))
    return _attention(rw, replace(node, attrs={"args": sdpa_args, "kwargs": {}}))


@legalizes(FLASH.replace(".default", "_backward.default"), refuses="dropout, a mask, grouped key/value heads")
def _flash_attention_backward(rw: Rewriter, node: Node) -> str:
    """dq, dk, dv of softmax(q k^T * scale, causal) v, the probabilities recomputed: with dS the softmax's
    backward of dP = dO v^T, dv = P^T dO, dq = scale * dS k, dk = scale * dS^T q. The three outputs share one
    recomputation (kept on the rewriter by the op's arguments)."""
    key = f"{node.op}{node.attrs['args']}"  # the op's getitem nodes share its arguments, not a name
    shared = rw.memo.get(key)
    if shared is None:
        shared = rw.memo[key] = _attention_gradients(rw, node)
    index = node.attrs.get("index", 0)
    return rw.emit("reshape", [shared[index]], node.shape, final=True)


def _attention_gradients(rw: Rewriter, node: Node) -> tuple[str, str, str]:
    d_out, q, k, v = (rw.arg(node, i, n) for i, n in enumerate(("grad_out", "query", "key", "value")))
    dropout, causal = rw.arg(node, 6, "dropout_p", 0.0), bool(rw.arg(node, 7, "is_causal", False))
    kwargs = node.attrs.get("kwargs", {})
    if dropout or kwargs.get("attn_mask") is not None:
        raise rw.unsupported(node, "attention dropout or a mask in training (is_causal is supported)")
    shapes = [rw.shape(t) for t in (q, k, v, d_out)]
    if len({len(s) for s in shapes}) != 1 or len(shapes[0]) != 4 or shapes[1] != shapes[2] \
            or shapes[0][0] != shapes[1][0] or shapes[0][1] % shapes[1][1]:
        raise rw.unsupported(node, "key/value heads that are not [batch, heads / groups, seq, dim]")
    *batch, s_q, dim = shapes[0]
    kv_heads = shapes[1][1]
    groups = batch[1] // kv_heads
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        k, v = (_repeated_heads(rw, t, groups) for t in (k, v))
    s_k = shapes[1][-2]
    scale = kwargs.get("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim)
    rank = len(shapes[0])

    def transposed(x: str) -> str:
        shape = rw.shape(x)
        dims = [*range(rank - 2), rank - 1, rank - 2]
        return rw.emit("permute", [x], [shape[i] for i in dims], dims=dims)

    def scaled(x: str) -> str:
        return rw.emit("mul", [x, rw.const(np.full((1,), scale, np.float32))], rw.shape(x))

    scores = rw.emit("matmul", [q, k], (*batch, s_q, s_k), bias=False)
    attrs = {"scale": scale, "causal": causal, "group_rows": s_q}
    probs = rw.emit("softmax", [scores], (*batch, s_q, s_k), **attrs)
    d_v = rw.emit("matmul", [transposed(probs), transposed(d_out)], (*batch, s_k, dim), bias=False)
    d_probs = rw.emit("matmul", [d_out, v], (*batch, s_q, s_k), bias=False)
    rows = math.prod(batch) * s_q
    d_scores = softmax_backward(rw, rw.emit("reshape", [d_probs], (rows, s_k)),
                                rw.emit("reshape", [probs], (rows, s_k)), log=False)
    d_scores = rw.emit("reshape", [d_scores], (*batch, s_q, s_k))
    d_q = scaled(rw.emit("matmul", [d_scores, transposed(k)], (*batch, s_q, dim), bias=False))
    d_k = scaled(rw.emit("matmul", [transposed(d_scores), transposed(q)], (*batch, s_k, dim), bias=False))
    if groups > 1:
        d_k, d_v = (_summed_heads(rw, t, groups) for t in (d_k, d_v))
    return d_q, d_k, d_v


def _repeated_heads(rw: Rewriter, x: str, groups: int) -> str:
    """[b, hk, s, d] -> [b, hk * groups, s, d], each head repeated `groups` times in a row (as repeat_kv does)."""
    b, hk, s, d = rw.shape(x)
    wide = rw.emit("expand", [rw.emit("reshape", [x], (b, hk, 1, s, d))], (b, hk, groups, s, d))
    return rw.emit("reshape", [wide], (b, hk * groups, s, d))


def _summed_heads(rw: Rewriter, x: str, groups: int) -> str:
    """The gradient of `_repeated_heads`: each key/value head's `groups` copies summed."""
    b, h, s, d = rw.shape(x)
    split = rw.emit("reshape", [x], (b, h // groups, groups, s, d))
    moved = rw.emit("permute", [split], (b, h // groups, s, d, groups), dims=[0, 1, 3, 4, 2])
    rows = b * (h // groups) * s * d
    total = rw.emit("sum", [rw.emit("reshape", [moved], (rows, groups))], (rows, 1))
    return rw.emit("reshape", [total], (b, h // groups, s, d))
