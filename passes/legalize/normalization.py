"""Rules for layer_norm, rms_norm, softmax and log_softmax.

The kernels normalise over the last dim: a norm over several trailing dims folds them into one (the input
reshaped to [..., D], its weight and bias read as [D]); a softmax over another dim moves it last with a permute
and back.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wsc.core.ir import Node, Ref
from wsc.passes.legalize import Rewriter, legalizes


def over_trailing(rw: Rewriter, node: Node, op: str, x: str, normalized: list[int], inputs: list[str],
                  **attrs: float) -> str:
    """op over the trailing dims `normalized` of x: folded into one when there are several."""
    shape = rw.shape(x)
    if not normalized:
        raise rw.unsupported(node, "an empty normalized_shape (normalise over at least one dim)")
    if len(normalized) > len(shape) or tuple(shape[len(shape) - len(normalized):]) != tuple(normalized):
        raise rw.unsupported(node, f"normalized_shape {normalized} is not the trailing dims of {list(shape)}")
    folded = (*shape[: len(shape) - len(normalized)], math.prod(normalized))
    if folded == tuple(node.shape):
        return rw.emit(op, [x, *inputs], node.shape, final=True, **attrs)
    y = rw.emit(op, [rw.emit("reshape", [x], folded), *inputs], folded, **attrs)
    return rw.emit("reshape", [y], node.shape, final=True)


@legalizes("aten.layer_norm.default", refuses="a normalized_shape that is not the input's trailing dims")
def _layer_norm(rw: Rewriter, node: Node) -> str:
    x, normalized = rw.arg(node, 0, "input"), list(rw.arg(node, 1, "normalized_shape"))
    w, b, eps = rw.arg(node, 2, "weight"), rw.arg(node, 3, "bias"), rw.arg(node, 4, "eps", 1e-5)
    d = math.prod(normalized)
    w = w if w is not None else rw.const(np.ones(d, np.float32))
    b = b if b is not None else rw.const(np.zeros(d, np.float32))
    return over_trailing(rw, node, "layernorm", x, normalized, [w, b], eps=float(eps))


@legalizes("aten.rms_norm.default", refuses="a normalized_shape that is not the input's trailing dims")
def _rms_norm(rw: Rewriter, node: Node) -> str:
    x, normalized = rw.arg(node, 0, "input"), list(rw.arg(node, 1, "normalized_shape"))
    w, eps = rw.arg(node, 2, "weight"), rw.arg(node, 3, "eps")
    if eps is None:  # torch's default: the machine epsilon of the input's dtype
        eps = torch.finfo(getattr(torch, rw.out[x].dtype)).eps
    return over_trailing(rw, node, "rmsnorm", x, normalized, [] if w is None else [w], eps=float(eps))


def over_dim(rw: Rewriter, node: Node, op: str, x: str, dim: int, **attrs) -> str:
    """op over dim `dim` of x: moved last with a permute, and back."""
    shape = rw.shape(x)
    if not shape:  # a 0-d input: one element, one row
        y = rw.emit(op, [rw.emit("reshape", [x], (1, 1))], (1, 1), **attrs, scale=1.0, group_rows=1)
        return rw.emit("reshape", [y], node.shape, final=True)
    rank = len(shape)
    dim %= rank
    rows = math.prod(shape) // shape[dim]
    if dim == rank - 1:
        return rw.emit(op, [x], node.shape, final=True, **attrs, scale=1.0, group_rows=rows)
    order = [d for d in range(rank) if d != dim] + [dim]
    moved = [shape[d] for d in order]
    y = rw.emit(op, [rw.emit("permute", [x], moved, dims=order)], moved, **attrs, scale=1.0, group_rows=rows)
    return rw.emit("permute", [y], node.shape, final=True, dims=[int(i) for i in np.argsort(order)])


def check_dtype(rw: Rewriter, node: Node, x: str) -> None:
    """softmax's dtype= and _softmax's half_to_float may only keep the input's dtype."""
    if node.op.startswith("aten._"):
        if rw.arg(node, 2, "half_to_float", False):
            raise rw.unsupported(node, "half_to_float (compile in one dtype)")
        return
    dtype = rw.arg(node, 2, "dtype")
    if dtype is not None and str(dtype).removeprefix("torch.") != rw.out[x].dtype:
        raise rw.unsupported(node, f"a softmax into {dtype} from {rw.out[x].dtype} (compile in one dtype)")


@legalizes("aten.softmax.int", "aten._softmax.default", refuses="a dtype other than the input's")
def _softmax(rw: Rewriter, node: Node) -> str:
    x, dim = rw.arg(node, 0, "self"), rw.arg(node, 1, "dim")
    check_dtype(rw, node, x)
    return over_dim(rw, node, "softmax", x, dim, causal=False)


@legalizes("aten.log_softmax.int", "aten._log_softmax.default", refuses="a dtype other than the input's")
def _log_softmax(rw: Rewriter, node: Node) -> str:
    x, dim = rw.arg(node, 0, "self"), rw.arg(node, 1, "dim")
    check_dtype(rw, node, x)
    return over_dim(rw, node, "log_softmax", x, dim)


# ---------------------------------------------------------------------------------- RMSNorm spelled out

CASTS = ("aten.to.dtype", "aten._to_copy.default", "aten.to.dtype_layout", "aten.type_as.default")
CHECKS = ("aten._assert_tensor_metadata.default",)  # read a value only to check it: no use of it


def spelled_out_rms_norm(rw: Rewriter, mean: Node) -> str | None:
    """x * rsqrt(mean(x^2, -1, keepdim=True) + eps), times a weight [D] when one follows, as Hugging Face's
    Llama writes RMSNorm: the chain from `mean` on becomes one rmsnorm kernel, when nothing else reads the
    values inside it (casts to the same dtype and metadata checks between its steps are let through). Every
    node of the chain is given the kernel's value, so legalize passes over them; None when `mean` heads no
    such chain."""
    source = rw.source

    def args(node: Node) -> tuple:
        return tuple(node.attrs.get("args", ()))

    def only_reader(node: Node) -> Node | None:
        readers = [source[u] for u in source.users(node.name) if source[u].op not in CHECKS]
        return readers[0] if len(readers) == 1 and node.name not in source.outputs else None

    def refs(node: Node) -> list[str]:
        return [a.name for a in args(node) if isinstance(a, Ref)]

    square = source[mean.inputs[0]] if len(mean.inputs) == 1 else None
    if square is None or mean.dtype != "float32" or mean.attrs.get("kwargs", {}).get("dtype") is not None:
        return None
    dims, keepdim = (list(args(mean)[1:3]) + [None, None])[:2]
    rank = len(square.shape)
    if not keepdim or not isinstance(dims, (list, tuple)) or len(dims) != 1 or dims[0] % max(rank, 1) != rank - 1:
        return None
    pow_of_two = square.op == "aten.pow.Tensor_Scalar" and args(square)[1:2] in ((2,), (2.0,))
    self_product = square.op == "aten.mul.Tensor" and len(refs(square)) == 2 and len(set(refs(square))) == 1
    if not (pow_of_two or self_product) or not refs(square):
        return None
    x = refs(square)[0]
    add = only_reader(mean)
    if add is None or add.op != "aten.add.Tensor" or refs(add) != [mean.name]:
        return None
    eps = next((a for a in args(add) if isinstance(a, (int, float))), None)
    if eps is None or add.attrs.get("kwargs", {}).get("alpha", 1) != 1:
        return None
    rsqrt = only_reader(add)
    if rsqrt is None or rsqrt.op != "aten.rsqrt.default":
        return None
    scaled = only_reader(rsqrt)
    if scaled is None or scaled.op != "aten.mul.Tensor" or sorted(refs(scaled)) != sorted([x, rsqrt.name]):
        return None
    chain, last = [add, rsqrt, scaled], scaled
    while (cast := only_reader(last)) is not None and cast.op in CASTS and cast.dtype == last.dtype \
            and refs(cast)[:1] == [last.name]:
        chain.append(cast)
        last = cast
    weight = None
    scale = only_reader(last)
    if scale is not None and scale.op == "aten.mul.Tensor" and len(refs(scale)) == 2 and last.name in refs(scale):
        other = source[next(r for r in refs(scale) if r != last.name)]
        if other.shape == (source[x].shape[-1],) and other.dtype == "float32" and other.name in rw.value:
            weight = rw.value[other.name]
            chain.append(scale)
            last = scale
    if last.shape != source[x].shape or any(n.dtype != "float32" for n in chain):
        return None
    value = rw.emit("rmsnorm", [rw.value[x]] + ([weight] if weight else []), last.shape, eps=float(eps))
    for node in chain:
        rw.value[node.name] = value
    return value
