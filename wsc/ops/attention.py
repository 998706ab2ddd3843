"""Fused attention: out[r, c] = sum_j softmax_j(scale * q[r] . k[h, j] + mask[r, j]) * v[h, j, c].

Inputs, in order: q [R, D], k [Gk, N, D], v [Gk, N, Dv], then an optional mask [Bm, Hm, Sm, Nm]; out is
[R, Dv]. Query rows come M (attrs["group_rows"]) at a time, row r belonging to query group g = r // M (a batch
x head pair), and group g reads the keys and values of group h = (g // attrs["groups"]) % Gk: `groups` query
heads share one key/value head (grouped-query attention; 1 by default), and keys and values with a batch of 1
serve every batch row (the modulo). Neither is ever copied, so k and v stay as small as the model made them.

The mask is read at its broadcast strides: each of Bm (batch), Hm (heads), Sm (queries) and Nm (keys) is 1 or
the full extent, so a key-padding mask [B, 1, 1, N] is B * N values, not a score matrix per head. Query group g
reads mask group (g // (G / Bm)) % Bm when only the batch varies, g % Hm when only the heads do. With
attrs["mask"] == "additive" the mask is added to the scaled score, as PyTorch adds a float mask; with "bool" a
key is seen where the mask is nonzero (its score is -inf elsewhere), whether the mask arrives as 1-byte bools
or as float 0.0 and 1.0 (attrs["mask_kind"] = "f32").

With causal=True, row r (i = r % M within its group) sees keys j <= i + diagonal (attrs["diagonal"], the
same rule as the softmax kernel, see `wsc.ops.softmax.causal_visible`). The default diagonal N - M
aligns the causal square with the last M keys (earlier keys, a prefix such as cached keys, are always
visible), which is what a causal mask buffer `tril(k=S-L)` means; PyTorch's `is_causal=True` is top-left
aligned, diagonal 0. The visible count is clamped to [0, N]; a row that sees no key at all (diagonal < 0)
is 0, as PyTorch's safe softmax gives it. Keys beyond the diagonal are left out of the max and the sum, never
set to -inf, and cost nothing: a mask that holds a causal pattern is best given as the diagonal.

The scores are never stored: a wafer PE holding a block of queries sees the keys and values stream past
it and has no room for an [M, N] score matrix. Each row therefore makes two passes over its visible keys:
pass 1 finds the row max of the scaled scores (starting from the first visible key's score, not -inf),
pass 2 recomputes each score, adds p = exp(s - max) to the row sum and p * v[h, j, c0:c1] to the output
row, which serves as the accumulator; a final division by the sum normalises it. An online (one-pass)
softmax would need a running max that starts at -inf and a rescale by exp(old_max - new_max), which is
exp(-inf) on the first key; two passes keep the arithmetic free of infinities (and of rescaling), so any
inf or NaN in the output comes from the inputs. A mask is such an input: a row whose every score it makes
-inf has a max of -inf, so pass 2 subtracts 0 instead, every p is 0 and the row is 0, as PyTorch's safe
softmax gives it; a NaN or +inf in the mask makes its row NaN, as in PyTorch.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import ACCUMULATOR_BYTES, KernelOp, Shape, output_view, register, rows_in_flight
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
    no_vectorize,
    store_at,
)
from wsc.ops.softmax import FLOPS_PER_ELEMENT as SOFTMAX_FLOPS_PER_ELEMENT
from wsc.ops.softmax import causal_count, causal_diagonal, causal_visible

# The widest interleave group LLVM forms (its max-interleave-group-factor): up to this D, pass 1's key loop is
# kept scalar (see the module docstring).
_SCALAR_SCORE_LOOP_MAX_D = 8


MASKS = ("additive", "bool")  # attrs["mask"]: what the mask input means
MASK_KINDS = ("f32", "bool")  # how it arrives: float32, or 1-byte bools


def mask_view(shape: Shape) -> Shape:
    """A mask of any rank as the kernel reads it, [Bm, Hm, Sm, Nm]: the dims before the heads folded into one,
    the missing leading dims 1."""
    padded = (1,) * max(0, 4 - len(shape)) + tuple(shape)
    return math.prod(padded[:-3]), padded[-3], padded[-2], padded[-1]


def mask_kind(attrs: Mapping[str, Any]) -> str:
    """The input kind a mask arrives in: an additive mask is float32, a bool mask 1-byte bools unless
    attrs["mask_kind"] says it arrives as float 0.0 and 1.0."""
    return "f32" if attrs.get("mask") == "additive" else str(attrs.get("mask_kind", "bool"))


@dataclass(frozen=True)
class _Layout:
    """What a valid spec fixes: the query groups G of M rows, N keys, the widths D (q, k) and Dv (v, out), the
    Gk key/value groups and how many query groups share one, the scale, the causal diagonal, the mask."""

    g: int
    m: int
    n: int
    d: int
    dv: int
    gk: int
    groups: int
    scale: float
    causal: bool
    diagonal: int
    mask: str | None
    mask_dims: Shape

    def kv_group(self, b: ir.IRBuilder, group: ir.Value) -> ir.Value:
        """(g // groups) % Gk, emitting only what this layout needs."""
        if self.groups > 1:
            group = b.udiv(group, i64(self.groups))
        return b.urem(group, i64(self.gk)) if self.g // self.groups != self.gk else group

    def mask_group(self, b: ir.IRBuilder, group: ir.Value) -> ir.Value:
        bm, hm = self.mask_dims[:2]
        if bm > 1 and hm == 1:
            return b.udiv(group, i64(self.g // bm))
        if hm > 1 and bm == 1:
            return b.urem(group, i64(hm))
        return group if bm > 1 else i64(0)

    def mask_groups(self) -> np.ndarray:
        """The mask group each query group reads (what `mask_group` computes)."""
        bm, hm = self.mask_dims[:2]
        groups = np.arange(self.g)
        if bm > 1 and hm == 1:
            return groups // (self.g // bm)
        if hm > 1 and bm == 1:
            return groups % hm
        return groups if bm > 1 else np.zeros_like(groups)


def _check(spec: KernelSpec) -> _Layout:
    """The layout of a valid spec; ValueError naming the mismatch otherwise."""
    masked = spec.attrs.get("mask")
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != (4 if masked else 3):
        raise ValueError(f"attention: expected out [R, Dv] and inputs q [R, D], k [Gk, N, D], v [Gk, N, Dv]"
                         f"{' and a mask [Bm, Hm, Sm, Nm]' if masked else ''}; got {spec}")
    rows, dv = spec.out_shape
    q_shape, k_shape, v_shape = spec.in_shapes[:3]
    if len(q_shape) != 2 or q_shape[0] != rows:
        raise ValueError(f"attention: q has shape {q_shape}, expected [{rows}, D]")
    if len(k_shape) != 3:
        raise ValueError(f"attention: k has shape {k_shape}, expected [Gk, N, D]")
    if k_shape[2] != q_shape[1]:
        # q and k must share D: name the one whose width is not the output's either.
        wrong, shape, width = ("q", q_shape, k_shape[2]) if k_shape[2] == dv else ("k", k_shape, q_shape[1])
        raise ValueError(f"attention: {wrong} has shape {shape}, expected a width of {width}")
    gk, n, d = k_shape
    if v_shape != (gk, n, dv):
        raise ValueError(f"attention: v has shape {v_shape}, expected [{gk}, {n}, {dv}] (k's groups and keys, "
                         "the output's width)")
    m = int(spec.attrs.get("group_rows", rows // gk if gk else 1))
    if m <= 0 or rows % m:
        raise ValueError(f"attention: {rows} query rows are not {gk} groups of group_rows={m}, nor a multiple of "
                         f"{gk} groups")
    g, groups = rows // m, int(spec.attrs.get("groups", 1))
    if groups <= 0 or g % groups or gk <= 0 or (g // groups) % gk:
        raise ValueError(f"attention: {rows // m} groups of group_rows={m} are not groups={groups} query groups "
                         f"per key/value group of {gk}")
    if n <= 0:
        raise ValueError(f"attention: needs at least one key per group, got N={n}")
    causal = bool(spec.attrs.get("causal", False))
    diagonal = causal_diagonal(spec.attrs, m, n)
    if causal and "diagonal" not in spec.attrs and n < m:
        # The default diagonal N - M would leave row 0 of each group with no key: say what to set.
        raise ValueError(f"attention: causal needs N >= group_rows (or an explicit diagonal), got N={n}, "
                         f"group_rows={m}")
    mask_dims: Shape = ()
    if masked:
        if masked not in MASKS or mask_kind(spec.attrs) not in MASK_KINDS:
            raise ValueError(f"attention: mask {masked!r} arriving as {mask_kind(spec.attrs)!r}; masks are one of "
                             f"{MASKS}, arriving as one of {MASK_KINDS}")
        mask_dims = spec.in_shapes[3]
        bm, hm, sm, nm = mask_dims if len(mask_dims) == 4 else (0, 0, 0, 0)
        groups_ok = bm * hm == g if bm > 1 and hm > 1 else (bm == 1 or g % bm == 0) and (hm == 1 or g % hm == 0)
        if len(mask_dims) != 4 or min(mask_dims) <= 0 or sm not in (1, m) or nm not in (1, n) or not groups_ok:
            raise ValueError(f"attention: a mask of shape {mask_dims} does not broadcast over {g} groups of {m} "
                             f"queries and {n} keys (expected [Bm, Hm, 1 or {m}, 1 or {n}])")
    return _Layout(g, m, n, d, dv, gk, groups, float(spec.attrs.get("scale", 1.0)), causal, diagonal, masked,
                   mask_dims)


def lower_attention(spec: KernelSpec) -> KernelIR:
    lay = _check(spec)
    m, n, d, dv = lay.m, lay.n, lay.d, lay.dv
    kb = KernelBuilder(spec, ["f32", "f32", "f32"] + ([mask_kind(spec.attrs)] if lay.mask else []))
    b = kb.b
    q_ptr, k_ptr, v_ptr = kb.inputs[:3]
    exp = kb.intrinsic("llvm.exp")
    maxnum = kb.intrinsic("llvm.maxnum", 2)
    minus_inf, scale = f32(float("-inf")), lay.scale

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            group = b.udiv(r, i64(m))
            kv = lay.kv_group(b, group)
            k_mat = b.gep(k_ptr, [b.mul(kv, i64(n * d))], inbounds=True)
            v_mat = b.gep(v_ptr, [b.mul(kv, i64(n * dv))], inbounds=True)
            q_row = b.gep(q_ptr, [b.mul(r, i64(d))], inbounds=True)
            o_row = b.gep(kb.out, [b.mul(r, i64(dv))], inbounds=True)
            visible = causal_count(b, r, m, n, lay.diagonal) if lay.causal else i64(n)
            mask_row = None
            if lay.mask:
                _, _, sm, nm = lay.mask_dims
                start = b.mul(lay.mask_group(b, group), i64(sm * nm))
                if sm > 1:
                    start = b.add(start, b.mul(b.urem(r, i64(m)), i64(nm)))
                mask_row = b.gep(kb.inputs[3], [start], inbounds=True)

            def score(j: ir.Value) -> ir.Value:
                """scale * q[r] . k[h, j] over the full D, then the mask's part."""
                k_row = b.gep(k_mat, [b.mul(j, i64(d))], inbounds=True)

                def dot(c: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                    prod = b.fmul(load_at(b, q_row, c), load_at(b, k_row, c), flags=FAST)
                    return [b.fadd(acc[0], prod, flags=FAST)]

                (total,) = loop(b, i64(0), i64(d), [f32(0.0)], dot, name="d")
                s = b.fmul(total, f32(scale))
                if mask_row is None:
                    return s
                entry = load_at(b, mask_row, j if lay.mask_dims[3] > 1 else i64(0))
                if lay.mask == "additive":
                    return b.fadd(s, entry)
                zero = f32(0.0) if mask_kind(spec.attrs) == "f32" else ir.Constant(entry.type, 0)
                seen = b.fcmp_unordered("!=", entry, zero) if mask_kind(spec.attrs) == "f32" \
                    else b.icmp_unsigned("!=", entry, zero)
                return b.select(seen, s, minus_inf)

            # Pass 1: the row max, from key 0's score (always visible) rather than from -inf.
            def row_max(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                return [b.call(maxnum, [acc[0], score(j)], fastmath=FAST)]

            # Key 0 exists (N >= 1), so its score is a safe start even for a row that sees no key.
            (mx,) = loop(b, i64(1), visible, [score(i64(0))], row_max, name="max")
            if d <= _SCALAR_SCORE_LOOP_MAX_D:
                no_vectorize(kb.module, mx)
            if lay.mask:
                # A row the mask hides entirely has a max of -inf: subtract 0, so that each p is exp(-inf) = 0.
                mx = b.select(b.fcmp_ordered("==", mx, minus_inf), f32(0.0), mx)

            # Pass 2: the output row accumulates p * v[h, j] over the tile's columns, and total the p.
            with for_range(b, c0, c1, "zero") as c:
                store_at(b, f32(0.0), o_row, c)

            def accumulate(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                p = b.call(exp, [b.fsub(score(j), mx)])
                v_row = b.gep(v_mat, [b.mul(j, i64(dv))], inbounds=True)
                with for_range(b, c0, c1, "c") as c:
                    o = b.fadd(load_at(b, o_row, c), b.fmul(p, load_at(b, v_row, c), flags=CONTRACT), flags=CONTRACT)
                    store_at(b, o, o_row, c)
                return [b.fadd(acc[0], p, flags=FAST)]

            (total,) = loop(b, i64(0), visible, [f32(0.0)], accumulate, name="key")
            if lay.mask:
                # A row that sees no key (or whose every p is 0) has a zero output row: divide by 1, not by 0.
                total = b.select(b.fcmp_ordered("==", total, f32(0.0)), f32(1.0), total)
            elif lay.causal and lay.diagonal < 0:
                # A row that sees no key has a zero output row and a zero sum: divide by 1, not by 0.
                total = b.select(b.icmp_signed("==", visible, i64(0)), f32(1.0), total)
            with for_range(b, c0, c1, "norm") as c:
                store_at(b, b.fdiv(load_at(b, o_row, c), total), o_row, c)
    return kb.finish()


def _mask_bytes(attrs: Mapping[str, Any], size: int) -> int:
    """Bytes of one mask entry: a bool is a byte, anything else an element of the compute dtype."""
    return 1 if mask_kind(attrs) == "bool" else size


@register
class Attention(KernelOp):
    """softmax(scale * q k^T + mask, causal) v in one kernel whose PEs hold query rows while keys, values and
    the mask stream past; the scores are never stored.

    Cost: the two matmuls over the full square of scores (2 * D + 2 * Dv per query and key) and the softmax
    between them (5 per score, and 1 more to apply a mask). Cut by query rows only (`whole_rows`): every output
    column needs the whole query row. SRAM per PE: its query rows whole (tr * D), fp32 accumulators for its
    output block, a running max and sum per row, and one streamed key row (D), value row (Dv) and the mask's
    entries for that key (one per row the PE holds, or one for all when the mask is the same for every query),
    double-buffered. SRAM traffic per query row and key: the score's dot product reads the query's D elements
    (the key arrives over the fabric), the weighted sum's tc multiply-adds read and write the output's partials
    (the value arrives), the softmax reads its max, exp and sum (3) and writes 2, and a mask entry is read.
    Grouped key/value heads change none of this per PE: they shrink what streams, k and v, which are read as
    the model made them.
    """

    name = "attention"
    whole_rows = True

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        rows, dv = output_view(out_shape)
        pairs, d = rows * in_shapes[1][-2], in_shapes[0][-1]
        return 2 * pairs * (d + dv) + (SOFTMAX_FLOPS_PER_ELEMENT + (1 if attrs.get("mask") else 0)) * pairs

    def pass_held_inputs(self, graph: Graph, node: Node) -> tuple[int, ...]:
        """The keys and values: each query row of a sequence reads every one before it."""
        return (1, 2)

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        rows = rows_in_flight(tr)
        d, dv = graph[node.inputs[0]].shape[-1], node.shape[-1]
        held = rows * d * size + rows * tc * ACCUMULATOR_BYTES + rows * 2 * ACCUMULATOR_BYTES + 2 * (d + dv) * size
        if node.attrs.get("mask"):
            per_key = rows if mask_view(graph[node.inputs[3]].shape)[2] > 1 else 1
            held += 2 * per_key * _mask_bytes(node.attrs, size)
        return held

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        keys, d = graph[node.inputs[1]].shape[-2], graph[node.inputs[0]].shape[-1]
        pairs = tr * keys
        masked = pairs * _mask_bytes(node.attrs, size) if node.attrs.get("mask") else 0
        return (pairs * (d + tc + 3)) * size + masked, (pairs * (tc + 2)) * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """Queries as rows [R, D]; keys and values per group of rows (batch x heads) [Gk, N, D] and [Gk, N, Dv];
        the mask as [Bm, Hm, Sm, Nm] (`mask_view`)."""
        q, k, v = (graph[i].shape for i in node.inputs[:3])
        rows, cols = output_view(node.shape)
        ins = [(rows, q[-1]), (math.prod(k[:-2]), *k[-2:]), (math.prod(v[:-2]), *v[-2:])]
        return (rows, cols), ins + [mask_view(graph[i].shape) for i in node.inputs[3:]]

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """A score's dot product over the head's D, then the softmax's and the weighted sum's over the keys."""
        return graph[node.inputs[0]].shape[-1] + graph[node.inputs[1]].shape[-2]

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_attention(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        """out[r] = softmax_j(scale * q[r] . k[h, j] + mask) @ v[h] over the visible keys (a row that sees none,
        or whose every score is -inf, is 0), g = r // M, h = (g // groups) % Gk."""
        spec = KernelSpec("attention", tuple(out_shape), tuple(x.shape for x in inputs), attrs)
        lay = _check(spec)
        q, k, v = (x.astype(np.float64) for x in inputs[:3])
        kv = (np.arange(lay.g) // lay.groups) % lay.gk
        s = np.einsum("gmd,gnd->gmn", q.reshape(lay.g, lay.m, lay.d), k[kv]) * lay.scale
        if lay.causal:
            visible = np.broadcast_to(causal_visible(lay.m, lay.n, lay.diagonal), s.shape)
        else:
            visible = np.ones(s.shape, dtype=bool)
        if lay.mask:
            bm, hm, sm, nm = lay.mask_dims
            entries = np.broadcast_to(inputs[3].reshape(bm * hm, sm, nm)[lay.mask_groups()], s.shape)
            if lay.mask == "additive":
                s = s + entries.astype(np.float64)
            else:
                s = np.where(entries != 0, s, -np.inf)
        s = np.where(visible, s, -np.inf)
        with np.errstate(invalid="ignore"):
            top = s.max(axis=-1, keepdims=True)
            top = np.where(top == -np.inf, 0.0, top)  # a row of -inf only: every p is 0
            e = np.where(visible, np.exp(s - top), 0.0)
            p = e / np.where(e.sum(axis=-1, keepdims=True) == 0, 1.0, e.sum(axis=-1, keepdims=True))
        return np.einsum("gmn,gnd->gmd", p, v[kv]).reshape(lay.g * lay.m, lay.dv)


@register
class MaskBias(KernelOp):
    """The additive form of a boolean attention mask, 0 where it is nonzero and -inf elsewhere: what the unfused
    form of attention adds to its scores for a bool mask known only at run time (PyTorch's own conversion). The
    mask arrives as 1-byte bools, or as float 0.0 and 1.0 (attrs["mask_kind"] = "f32"); 1 FLOP an element."""

    name = "mask_bias"
    flops_per_element = 1

    def lower(self, spec: KernelSpec) -> KernelIR:
        if len(spec.out_shape) != 2 or spec.in_shapes != (spec.out_shape,):
            raise ValueError(f"mask_bias: expected out [R, C] and one input of the same shape; got {spec}")
        kind = str(spec.attrs.get("mask_kind", "bool"))
        kb = KernelBuilder(spec, [kind])
        b = kb.b
        cols = spec.out_shape[1]
        with kb.for_tiles() as (r0, r1, c0, c1):
            with for_range(b, r0, r1, "r") as r:
                base = b.mul(r, i64(cols))
                with for_range(b, c0, c1, "c") as c:
                    idx = b.add(base, c)
                    entry = load_at(b, kb.inputs[0], idx)
                    seen = b.fcmp_unordered("!=", entry, f32(0.0)) if kind == "f32" \
                        else b.icmp_unsigned("!=", entry, ir.Constant(entry.type, 0))
                    store_at(b, b.select(seen, f32(0.0), f32(float("-inf"))), kb.out, idx)
        return kb.finish()

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        return np.where(inputs[0] != 0, 0.0, -np.inf)
