"""Row softmax of scale * x, optionally causal: y[r, j] = softmax_j(scale * x[r, j]).

With causal=True and rows grouped M at a time (R = groups * M), row r may attend to columns
j <= (r % M) + diagonal (attrs["diagonal"]). The default diagonal N - M puts the square causal block
on the last M columns, earlier columns (a prefix such as cached keys) being always visible: what a
causal mask buffer `tril(k=S-L)` means. PyTorch's `is_causal=True` is top-left aligned: diagonal 0.
The visible count is clamped to [0, N]; a row that sees no column (diagonal < 0) is all 0, as
PyTorch's safe softmax gives it. Masked columns are exactly 0 and are left out of the max and the
sum rather than set to -inf, so no inf arithmetic happens at all. With attrs["safe"] a row of -inf only is 0
too, not NaN: aten._safe_softmax, what sdpa gives a query its mask hides from every key.
Row statistics cover the whole row whatever columns a tile writes.

log_softmax is the same kernel's log: y[r, j] = (x[r, j] - max_r) - log(sum_k exp(x[r, k] - max_r)), torch's
max-subtracted log-sum-exp. A row whose max is inf or -inf (all -inf, or holding +inf) gives NaN, as torch
gives it; an entry of -inf in a finite row gives -inf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import KernelPlan
from wsc.ops.base import KernelOp, Shape, output_view, register
from wsc.ops.codegen import (
    FAST,
    KernelBuilder,
    KernelIR,
    KernelSpec,
    f32,
    for_range,
    i64,
    load_at,
    loop,
    no_vectorize,
    smax,
    smin,
    store_at,
)


def lower_softmax(spec: KernelSpec, log: bool = False) -> KernelIR:
    """The softmax kernel, or with `log` the log_softmax one (which has no causal mask)."""
    if len(spec.out_shape) != 2 or spec.in_shapes != (spec.out_shape,):
        raise ValueError(f"{spec.op}: expected out [R, N] and one input of the same shape; got {spec}")
    if log and spec.attrs.get("causal", False):
        raise ValueError(f"{spec.op}: no causal mask (mask the input with -inf instead)")
    rows, n = spec.out_shape
    scale = float(spec.attrs.get("scale", 1.0))
    causal = bool(spec.attrs.get("causal", False))
    m = int(spec.attrs.get("group_rows", rows if rows else 1))
    if m <= 0 or rows % m:
        raise ValueError(f"softmax: group_rows {m} does not divide the {rows} rows")
    diagonal = causal_diagonal(spec.attrs, m, n)
    if causal and "diagonal" not in spec.attrs and n < m:
        # The default diagonal N - M would leave row 0 of each group with no column: say what to set.
        raise ValueError(f"softmax: causal needs N >= group_rows (or an explicit diagonal), got N={n}, "
                         f"group_rows={m}")
    # A causal row that sees at most a few columns (queries of a group over a diagonal near 0) runs its max
    # and sum loops scalar: with the trip count bounded that low, LLVM's two vectorizer cost models disagree on
    # some CPUs (an AMD EPYC's) and its assertion aborts the process (see codegen.no_vectorize).
    short = causal and min(n, m + diagonal) <= SHORT_ROW
    kb = KernelBuilder(spec, ["f32"])
    b = kb.b
    (x_ptr,) = kb.inputs
    exp = kb.intrinsic("llvm.exp")
    maxnum = kb.intrinsic("llvm.maxnum", 2)

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            x_row = b.gep(x_ptr, [b.mul(r, i64(n))], inbounds=True)
            o_row = b.gep(kb.out, [b.mul(r, i64(n))], inbounds=True)
            visible = causal_count(b, r, m, n, diagonal) if causal else i64(n)

            def scaled(j: ir.Value) -> ir.Value:
                return b.fmul(load_at(b, x_row, j), f32(scale))

            def row_max(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                return [b.call(maxnum, [acc[0], scaled(j)], fastmath=FAST)]

            (mx,) = loop(b, i64(0), visible, [f32(float("-inf"))], row_max, name="max")
            if short:
                no_vectorize(kb.module, mx)
            safe = bool(spec.attrs.get("safe", False)) and not log
            if safe:
                # A row of -inf only has a max of -inf: subtract 0 instead, so each exp is 0 and the row is 0.
                mx = b.select(b.fcmp_ordered("==", mx, f32(float("-inf"))), f32(0.0), mx)

            def row_sum(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                return [b.fadd(acc[0], b.call(exp, [b.fsub(scaled(j), mx)]), flags=FAST)]

            (total,) = loop(b, i64(0), visible, [f32(0.0)], row_sum, name="sum")
            if short:
                no_vectorize(kb.module, total)
            if log:
                log_total = b.call(kb.intrinsic("llvm.log"), [total])
                with for_range(b, c0, c1, "c") as j:
                    store_at(b, b.fsub(b.fsub(scaled(j), mx), log_total), o_row, j)
            else:
                if safe:
                    total = b.select(b.fcmp_ordered("==", total, f32(0.0)), f32(1.0), total)
                elif causal and diagonal < 0:
                    # A row that sees no column stores only zeros; keep its unused 1 / sum finite all the same.
                    total = b.select(b.icmp_signed("==", visible, i64(0)), f32(1.0), total)
                inv = b.fdiv(f32(1.0), total)
                split = smax(b, c0, smin(b, c1, visible))
                with for_range(b, c0, split, "c") as j:
                    store_at(b, b.fmul(b.call(exp, [b.fsub(scaled(j), mx)]), inv), o_row, j)
                with for_range(b, split, c1, "cm") as j:
                    store_at(b, f32(0.0), o_row, j)
    return kb.finish()


FLOPS_PER_ELEMENT = 5  # scale, max, subtract-exp, sum, normalise
SHORT_ROW = 8  # a causal row seeing at most this many columns keeps its row loops scalar
LOG_FLOPS_PER_ELEMENT = 4  # max, subtract-exp, sum, subtract the log-sum


def causal_diagonal(attrs: Mapping[str, Any], m: int, n: int) -> int:
    """The causal diagonal of a group of m queries over n keys: attrs["diagonal"], by default n - m (the last
    m keys are the causal square, earlier ones a prefix every query sees)."""
    return int(attrs.get("diagonal", n - m))


def causal_count(b: ir.IRBuilder, r: ir.Value, m: int, n: int, diagonal: int) -> ir.Value:
    """How many keys row r sees: (r % m) + diagonal + 1, clamped to [0, n]; each clamp is emitted only when
    some row of the group needs it, so the default diagonal n - m needs neither."""
    if diagonal >= n - 1:
        if diagonal == n - m:
            return b.add(b.urem(r, i64(m)), i64(n - m + 1))  # m == 1: the one row sees all n keys
        return i64(n)
    visible = b.add(b.urem(r, i64(m)), i64(diagonal + 1))
    if m + diagonal > n:
        visible = smin(b, visible, i64(n))
    if diagonal < 0:
        visible = smax(b, visible, i64(0))
    return visible


def causal_visible(m: int, n: int, diagonal: int | None = None) -> np.ndarray:
    """[m, n] bool: query i of a group of m sees key j <= i + diagonal (by default n - m: the last m keys are
    the causal square, earlier ones a prefix every query sees)."""
    return np.arange(n)[None, :] <= np.arange(m)[:, None] + (n - m if diagonal is None else diagonal)


@register
class Softmax(KernelOp):
    """Row softmax of scale * x, optionally causal over groups of `group_rows` rows; 5 FLOPs an element.
    SRAM: the input and output tiles. Traffic: reads 3 * tile (max, exp-sum, normalise), writes 2 * tile
    (exp, normalised)."""

    name = "softmax"
    flops_per_element = FLOPS_PER_ELEMENT

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return 3 * tr * tc * size, 2 * tr * tc * size

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """The row's sum of exponentials adds its whole length."""
        return max(1, output_view(node.shape)[1])

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_softmax(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        x = inputs[0].astype(np.float64) * float(attrs.get("scale", 1.0))
        rows, n = x.shape
        if attrs.get("causal", False):
            m = int(attrs.get("group_rows", rows))
            visible = np.tile(causal_visible(m, n, causal_diagonal(attrs, m, n)), (rows // m, 1))
        else:
            visible = np.ones_like(x, dtype=bool)
        x = np.where(visible, x, -np.inf)
        top = np.where(visible.any(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True), 0.0)
        if attrs.get("safe", False):
            top = np.where(top == -np.inf, 0.0, top)
        e = np.where(visible, np.exp(x - top), 0.0)
        return e / np.maximum(e.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)  # a row seeing none: 0


@register
class LogSoftmax(KernelOp):
    """Row log_softmax of scale * x (no causal mask); 4 FLOPs an element. SRAM: the input and output tiles.
    Traffic: reads 3 * tile (max, exp-sum, output), writes the tile once."""

    name = "log_softmax"
    flops_per_element = LOG_FLOPS_PER_ELEMENT

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return 3 * tr * tc * size, tr * tc * size

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """The row's sum of exponentials adds its whole length."""
        return max(1, output_view(node.shape)[1])

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_softmax(spec, log=True)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        x = inputs[0].astype(np.float64) * float(attrs.get("scale", 1.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            top = np.fmax.reduce(x, axis=-1, keepdims=True) if x.shape[-1] else x  # NaN left out, as the kernel
            shifted = x - top
            return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
