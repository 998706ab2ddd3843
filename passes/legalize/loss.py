"""Rules for the losses: cross_entropy of class-index targets, and nll_loss of log-probabilities.

cross_entropy is log_softmax over the class dim (dim 1, or 0 of an unbatched [C] input) and then nll: the
class dim moved last and the input folded to [M, C], the targets to [M]; the nll kernel picks each row's
-weight * log-probability (wsc/ops/nll.py). reduction "none" unfolds the M losses to the targets' shape;
"sum" sums them; "mean" divides their sum by the sum of the kept targets' weights (nll_weight), a number
known only at run time, as torch does.
"""

from __future__ import annotations

import math

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes

REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}  # at::Reduction, as the ATen ops take it


def class_rows(rw: Rewriter, node: Node, x: str) -> str:
    """x [N, C, d1...] (or [C]) as [M, C]: the class dim moved last and the others folded into rows."""
    shape = rw.shape(x)
    if len(shape) == 1:
        return rw.emit("reshape", [x], (1, shape[0]))
    order = [0, *range(2, len(shape)), 1]
    if order != list(range(len(shape))):
        x = rw.emit("permute", [x], [shape[d] for d in order], dims=order)
    rows = math.prod(shape) // shape[1]
    return x if rw.shape(x) == (rows, shape[1]) else rw.emit("reshape", [x], (rows, shape[1]))


def nll(rw: Rewriter, node: Node, logp: str, target: str, weight: str | None, reduction: int,
        ignore_index: int) -> str:
    """The nll of [M, C] log-probabilities at the targets, reduced as `reduction` says, into the node's shape."""
    if reduction not in REDUCTIONS:
        raise rw.unsupported(node, f"reduction {reduction} (none, mean and sum are the ones torch has)")
    rows, classes = rw.shape(logp)
    if rw.shape(target) != (rows,):
        target = rw.emit("reshape", [target], (rows,))
    attrs = {"ignore_index": int(ignore_index), "classes": classes, "weighted": weight is not None}
    extra = [weight] if weight is not None else []
    losses = rw.emit("nll", [logp, target, *extra], (rows, 1), **attrs)
    if REDUCTIONS[reduction] == "none":
        return rw.emit("reshape", [losses], node.shape, final=True)
    losses = rw.emit("reshape", [losses], (1, rows))
    if REDUCTIONS[reduction] == "sum":
        total = rw.emit("sum", [losses], (1, 1))
    else:
        kept = rw.emit("reshape", [rw.emit("nll_weight", [target, *extra], (rows, 1), **attrs)], (1, rows))
        total = rw.emit("sum", [losses, rw.emit("sum", [kept], (1, 1))], (1, 1), row_divisor=True)
    return rw.emit("reshape", [total], node.shape, final=True)


def check(rw: Rewriter, node: Node, x: str, target: str, weight: str | None) -> None:
    if rw.out[x].dtype != "float32" or (weight is not None and rw.out[weight].dtype != "float32"):
        raise rw.unsupported(node, f"a loss of {rw.out[x].dtype} values (the kernels compute in float32)")
    if rw.out[target].dtype != "int64":
        raise rw.unsupported(node, f"{rw.out[target].dtype} targets (class probabilities): give class indices, "
                                   "int64")


@legalizes("aten.cross_entropy_loss.default",
           refuses="class-probability targets, label_smoothing, values other than float32")
def _cross_entropy(rw: Rewriter, node: Node) -> str:
    x, target, weight = rw.arg(node, 0, "self"), rw.arg(node, 1, "target"), rw.arg(node, 2, "weight")
    reduction, ignore_index = rw.arg(node, 3, "reduction", 1), rw.arg(node, 4, "ignore_index", -100)
    check(rw, node, x, target, weight)
    if rw.arg(node, 5, "label_smoothing", 0.0):
        raise rw.unsupported(node, "label_smoothing (only 0 is supported)")
    rows_x = class_rows(rw, node, x)
    rows, classes = rw.shape(rows_x)
    logp = rw.emit("log_softmax", [rows_x], (rows, classes), scale=1.0, group_rows=rows)
    return nll(rw, node, logp, target, weight, reduction, ignore_index)


@legalizes("aten.nll_loss.default", "aten.nll_loss_nd.default", "aten.nll_loss2d.default",
           refuses="class-probability targets, values other than float32")
def _nll_loss(rw: Rewriter, node: Node) -> str:
    x, target, weight = rw.arg(node, 0, "self"), rw.arg(node, 1, "target"), rw.arg(node, 2, "weight")
    reduction, ignore_index = rw.arg(node, 3, "reduction", 1), rw.arg(node, 4, "ignore_index", -100)
    check(rw, node, x, target, weight)
    return nll(rw, node, class_rows(rw, node, x), target, weight, reduction, ignore_index)
