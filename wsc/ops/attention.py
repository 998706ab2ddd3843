"""Fused attention: out[r, c] = sum_j softmax_j(scale * q[r] . k[g, j]) * v[g, j, c].

Inputs, in order: q [R, D], k [G, N, D], v [G, N, D]; out is [R, D] with R = G * M, query rows grouped
M (attrs["group_rows"]) at a time, row r belonging to group g = r // M (a batch x head pair). With
causal=True, row r (i = r % M within its group) sees keys j <= i + diagonal (attrs["diagonal"], the
same rule as the softmax kernel, see `wsc.ops.softmax.causal_visible`). The default diagonal N - M
aligns the causal square with the last M keys (earlier keys, a prefix such as cached keys, are always
visible), which is what a causal mask buffer `tril(k=S-L)` means; PyTorch's `is_causal=True` is top-left
aligned, diagonal 0. The visible count is clamped to [0, N]; a row that sees no key at all (diagonal < 0)
is 0, as PyTorch's safe softmax gives it. Masked keys are left out of the max and the sum, never set to
-inf.

The scores are never stored: a wafer PE holding a block of queries sees the keys and values stream past
it and has no room for an [M, N] score matrix. Each row therefore makes two passes over its visible keys:
pass 1 finds the row max of the scaled scores (starting from the first visible key's score, not -inf),
pass 2 recomputes each score, adds p = exp(s - max) to the row sum and p * v[g, j, c0:c1] to the output
row, which serves as the accumulator; a final division by the sum normalises it. An online (one-pass)
softmax would need a running max that starts at -inf and a rescale by exp(old_max - new_max), which is
exp(-inf) on the first key; two passes keep the arithmetic free of infinities (and of rescaling), so any
inf or NaN in the output comes from the inputs.

The scores always use the full D of q and k, whatever columns a tile writes, so any split of the output
into tiles (spanning groups or not) produces the same values.

For D <= 8 pass 1's key loop carries a `llvm.loop.vectorize.enable false` hint. Once LLVM has unrolled the
D-long dot product, that loop is innermost and its D strided loads of a key row form one interleave group
(LLVM groups at most 8). For such groups, LLVM's VPlan cost model and legacy cost model pick different
vector widths, and the assertion that checks they agree aborts the process (LLVM as llvmlite 0.50 ships
it: "VPlan cost model and legacy cost model disagreed"). The loop does D multiply-adds and a max per key,
so running it scalar costs little. Larger D is left alone: its loads become gathers, which the two cost
models price the same, and at D = 64 the dot product is not unrolled, so the loop is not innermost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import ACCUMULATOR_BYTES, KernelOp, Shape, output_view, register
from wsc.ops.codegen import (
    CONTRACT,
    FAST,
    KernelBuilder,
    KernelIR,
    KernelSpec,
    f32,
    for_range,
    i64,
    load_at,
    loop,
    store_at,
)
from wsc.ops.softmax import FLOPS_PER_ELEMENT as SOFTMAX_FLOPS_PER_ELEMENT
from wsc.ops.softmax import causal_count, causal_diagonal, causal_visible

# The widest interleave group LLVM forms (its max-interleave-group-factor): up to this D, pass 1's key loop is
# kept scalar (see the module docstring).
_SCALAR_SCORE_LOOP_MAX_D = 8


class _LoopID(ir.values.MDValue):
    """A loop's `!llvm.loop` node: distinct, its first operand itself, then its hints. llvmlite.ir's MDValue is
    uniqued and hashes its operands, so a node that holds itself needs its own class."""

    def __init__(self, module: ir.Module, hints: Sequence[ir.values.MDValue]):
        super().__init__(module, (), name=str(len(module.metadata)))
        self.operands = (self, *hints)

    def descr(self, buf: list[str]) -> None:
        refs = ", ".join(op.get_reference() for op in self.operands)
        buf += (f"distinct !{{ {refs} }}", "\n")

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


def _no_vectorize(module: ir.Module, carried: ir.Value) -> None:
    """Tell the loop vectorizer to leave alone the loop that carries `carried` (a value `loop` returned)."""
    assert isinstance(carried, ir.PhiInstr)
    latch = carried.incomings[-1][1]
    hint = module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.enable"), ir.IntType(1)(0)])
    latch.terminator.set_metadata("llvm.loop", _LoopID(module, [hint]))


def _check(spec: KernelSpec) -> tuple[int, int, int, int, float, bool, int]:
    """(G, M, N, D, scale, causal, diagonal) of a valid spec; ValueError naming the mismatch otherwise."""
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != 3:
        raise ValueError(f"attention: expected out [R, D] and inputs q [R, D], k [G, N, D], v [G, N, D]; got {spec}")
    rows, d = spec.out_shape
    q_shape, k_shape, v_shape = spec.in_shapes
    if q_shape != (rows, d):
        raise ValueError(f"attention: q has shape {q_shape}, expected [{rows}, {d}]")
    if len(k_shape) != 3 or k_shape[2] != d:
        raise ValueError(f"attention: k has shape {k_shape}, expected [G, N, {d}]")
    g, n, _ = k_shape
    if v_shape != k_shape:
        raise ValueError(f"attention: v has shape {v_shape}, expected the shape of k {k_shape}")
    m = int(spec.attrs.get("group_rows", rows // g if g else 1))
    if m <= 0 or rows != g * m:
        raise ValueError(f"attention: {rows} query rows are not {g} groups of group_rows={m}")
    if n <= 0:
        raise ValueError(f"attention: needs at least one key per group, got N={n}")
    causal = bool(spec.attrs.get("causal", False))
    diagonal = causal_diagonal(spec.attrs, m, n)
    if causal and "diagonal" not in spec.attrs and n < m:
        # The default diagonal N - M would leave row 0 of each group with no key: say what to set.
        raise ValueError(f"attention: causal needs N >= group_rows (or an explicit diagonal), got N={n}, "
                         f"group_rows={m}")
    return g, m, n, d, float(spec.attrs.get("scale", 1.0)), causal, diagonal


def lower_attention(spec: KernelSpec) -> KernelIR:
    _, m, n, d, scale, causal, diagonal = _check(spec)
    kb = KernelBuilder(spec, ["f32", "f32", "f32"])
    b = kb.b
    q_ptr, k_ptr, v_ptr = kb.inputs
    exp = kb.intrinsic("llvm.exp")
    maxnum = kb.intrinsic("llvm.maxnum", 2)

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            group = b.mul(b.udiv(r, i64(m)), i64(n * d))
            k_mat = b.gep(k_ptr, [group], inbounds=True)
            v_mat = b.gep(v_ptr, [group], inbounds=True)
            q_row = b.gep(q_ptr, [b.mul(r, i64(d))], inbounds=True)
            o_row = b.gep(kb.out, [b.mul(r, i64(d))], inbounds=True)
            visible = causal_count(b, r, m, n, diagonal) if causal else i64(n)

            def score(j: ir.Value) -> ir.Value:
                """scale * q[r] . k[g, j], over the full D."""
                k_row = b.gep(k_mat, [b.mul(j, i64(d))], inbounds=True)

                def dot(c: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                    prod = b.fmul(load_at(b, q_row, c), load_at(b, k_row, c), flags=FAST)
                    return [b.fadd(acc[0], prod, flags=FAST)]

                (total,) = loop(b, i64(0), i64(d), [f32(0.0)], dot, name="d")
                return b.fmul(total, f32(scale))

            # Pass 1: the row max, from key 0's score (always visible) rather than from -inf.
            def row_max(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                return [b.call(maxnum, [acc[0], score(j)], fastmath=FAST)]

            # Key 0 exists (N >= 1), so its score is a safe start even for a row that sees no key.
            (mx,) = loop(b, i64(1), visible, [score(i64(0))], row_max, name="max")
            if d <= _SCALAR_SCORE_LOOP_MAX_D:
                _no_vectorize(kb.module, mx)

            # Pass 2: the output row accumulates p * v[g, j] over the tile's columns, and total the p.
            with for_range(b, c0, c1, "zero") as c:
                store_at(b, f32(0.0), o_row, c)

            def accumulate(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                p = b.call(exp, [b.fsub(score(j), mx)])
                v_row = b.gep(v_mat, [b.mul(j, i64(d))], inbounds=True)
                with for_range(b, c0, c1, "c") as c:
                    o = b.fadd(load_at(b, o_row, c), b.fmul(p, load_at(b, v_row, c), flags=CONTRACT), flags=CONTRACT)
                    store_at(b, o, o_row, c)
                return [b.fadd(acc[0], p, flags=FAST)]

            (total,) = loop(b, i64(0), visible, [f32(0.0)], accumulate, name="key")
            if causal and diagonal < 0:
                # A row that sees no key has a zero output row and a zero sum: divide by 1, not by 0.
                total = b.select(b.icmp_signed("==", visible, i64(0)), f32(1.0), total)
            with for_range(b, c0, c1, "norm") as c:
                store_at(b, b.fdiv(load_at(b, o_row, c), total), o_row, c)
    return kb.finish()


@register
class Attention(KernelOp):
    """softmax(scale * q k^T, causal) v in one kernel whose PEs hold query rows while keys and values stream
    past; the scores are never stored.

    Cost: the two matmuls over the full square of scores (4 * outputs * keys) and the softmax between them
    (5 per score). Cut by query rows only (`whole_rows`): every output column needs the whole query row.
    SRAM per PE: its query rows whole (tr * D), fp32 accumulators for its output block, a running max and sum
    per row, and one streamed key and value row, double-buffered. SRAM traffic per query row and key: the
    score's dot product reads the query's D elements (the key arrives over the fabric), the weighted sum's tc
    multiply-adds read and write the output's partials (the value arrives), and the softmax reads its max,
    exp and sum (3) and writes 2.
    """

    name = "attention"
    whole_rows = True

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        numel, keys = math.prod(out_shape), in_shapes[1][-2]
        return 4 * numel * keys + SOFTMAX_FLOPS_PER_ELEMENT * (numel // out_shape[-1]) * keys

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        d = graph[node.inputs[0]].shape[-1]
        return tr * d * size + tr * tc * ACCUMULATOR_BYTES + tr * 2 * ACCUMULATOR_BYTES + 2 * 2 * d * size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        keys, d = graph[node.inputs[1]].shape[-2], graph[node.inputs[0]].shape[-1]
        pairs = tr * keys
        return (pairs * (d + tc + 3)) * size, (pairs * (tc + 2)) * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """Queries as rows [R, D]; keys and values per group of rows (batch x heads) [G, N, D]."""
        ins = [graph[i].shape for i in node.inputs]
        rows, cols = output_view(node.shape)
        groups = math.prod(ins[1][:-2])
        return (rows, cols), [(rows, cols), (groups, *ins[1][-2:]), (groups, *ins[2][-2:])]

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_attention(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        """out[r] = softmax_j(scale * q[r] . k[g, j]) @ v[g] over the visible keys, g = r // M."""
        q, k, v = (x.astype(np.float64) for x in inputs)
        rows, d = q.shape
        g, n, _ = k.shape
        m = int(attrs.get("group_rows", rows // g if g else 1))
        s = np.einsum("gmd,gnd->gmn", q.reshape(g, m, d), k) * float(attrs.get("scale", 1.0))
        if attrs.get("causal", False):
            visible = causal_visible(m, n, causal_diagonal(attrs, m, n))
        else:
            visible = np.ones((m, n), dtype=bool)
        s = np.where(visible, s, -np.inf)
        top = np.where(visible.any(axis=-1, keepdims=True), s.max(axis=-1, keepdims=True), 0.0)
        e = np.where(visible, np.exp(s - top), 0.0)
        p = e / np.maximum(e.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)  # a row seeing no key: 0
        return np.einsum("gmn,gnd->gmd", p, v).reshape(rows, d)
