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

The scores are never stored whole: a wafer PE holding a block of queries sees the keys and values stream past
it and has no room for an [M, N] score matrix. On the host the kernel takes the keys in blocks of KB (`Blocking`:
a block's keys, or its values, fill at most half of L1; 128 at most) and keeps per query row a running max m, a
running sum l and the output row itself as the accumulator (an online softmax). For each key block a row sees:

1. its scores s_j = scale * q[r] . k[h, j] (+ the mask's part) into a KB-float scratch row, with the block's
   max of them;
2. m' = max(m, block max), the rescale f = exp(m - m'), p_j = exp(s_j - m') in place of the scores, and
   l = l * f + sum p_j;
3. o[c0:c1] = o * f + sum_j p_j v[h, j, c0:c1].

After the last block o is divided by l. m starts at -FLT_MAX, the lowest finite float, never at -inf: after the
first block it is that block's real max (a row whose scores so far are all -inf keeps -FLT_MAX), so s - m and
m - m' are never inf - inf, and the first rescale is exp(-FLT_MAX - m') = 0 on a zero accumulator (or 1 when
every score so far is -inf: the accumulator is still zero). When a block does not raise the max, f is exp(0),
exactly 1, and the rescale changes nothing. Every exp argument is at most 0, so none overflows; one below
-87.34 gives exactly 0, so two scores 160 apart (80 and -80) leave the lower one out without a denormal.
Any inf or NaN in the output therefore comes from the inputs: a NaN score is passed over by the max and makes its
p, and so its row, NaN; a +inf score makes the max +inf and its p exp(inf - inf), NaN, as in PyTorch. A row whose
every score a mask makes -inf has every p = exp(-inf - m) = 0, l = 0, and is 0 (l = 0 divides by 1 instead), as
PyTorch's safe softmax gives it; so is a row that sees no key.

Keys are cut into blocks at multiples of KB from key 0 and a row's visible count is its own, so the blocks a row
takes, and each operation on its values, depend on the row and the inputs only: query rows are taken in blocks of
up to 16 rows of one group (each key block then comes from L2 or L3 once per row block, and from L1 for the
other rows), but each row computes exactly what it would alone. The scores always use the full D of q and k,
whatever columns a tile writes, and each output element is the same chain of operations whichever lane of which
column pass holds it, so any split of the output into tiles (spanning groups or not, single rows, any columns)
produces bit-identical values.

Scores (D > 8) are explicit vectors of the host's width L (`HostCpu.lanes`): for L keys at once, L accumulators
each sum q[r, d] k[h, j, d] over D in vectors of L lanes of d (llvm.fma; a D that is not a multiple of L ends in
a masked load), and a transposed reduction (pairs of lanes within 128-bit chunks twice, then pairs of chunks, two
shuffles and an add a level) turns the L accumulators into one vector of L scores, every score by the same tree.
The last group of a block's keys reads its missing lanes from its first key (never past the visible ones) and
leaves them out of the max and the sum. Up to D = 8 a key's products fill at most one vector, and the scores are
computed key by key in a scalar loop instead. On an AMD EPYC (Zen 3) that is the faster form up to D = 4, and from
5 to 8 the vector form would make the whole kernel up to 1.4x faster (at D = 8); the limit stays at 8, the widest
interleave group LLVM forms, so every head size at which that loop once aborted LLVM (below) keeps the loop and
the hint tests/test_llvm_abort.py checks. The exp of p and of the rescale is `codegen.emit_vector_exp` (at most
1.02 ulp), not libm's. The weighted sum holds up to 8 vectors
of output columns in registers over a block's keys, one broadcast p and one llvm.fma a vector per key; a pass
over fewer columns reads and writes through lane masks.

The scalar score loop carries a `llvm.loop.vectorize.enable false` hint: once LLVM has unrolled the D-long dot
product, that loop is innermost and its D strided loads of a key row form one interleave group (LLVM groups at
most 8). For such groups, LLVM's VPlan cost model and legacy cost model pick different vector widths, and the
assertion that checks they agree aborts the process (LLVM as llvmlite 0.50 ships it: "VPlan cost model and legacy
cost model disagreed"). The loops of vector code need no hint: LLVM's loop vectorizer leaves alone any loop that
already computes on vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import ACCUMULATOR_BYTES, KernelOp, Shape, output_view, register, rows_in_flight
from wsc.ops.codegen import (
    CONTRACT,
    F32,
    I32,
    I64,
    HostCpu,
    KernelBuilder,
    KernelIR,
    KernelSpec,
    ceil_div,
    emit_vector_exp,
    f32,
    for_range,
    i64,
    load_at,
    load_vector,
    loop,
    no_vectorize,
    smin,
    splat,
    store_at,
    store_vector,
    vector,
    while_loop,
)
from wsc.ops.softmax import FLOPS_PER_ELEMENT as SOFTMAX_FLOPS_PER_ELEMENT
from wsc.ops.softmax import causal_count, causal_diagonal, causal_visible

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

    def kv_groups(self) -> np.ndarray:
        """The key/value group each query group reads (what `kv_group` computes)."""
        return (np.arange(self.g) // self.groups) % self.gk

    def mask_entries(self, mask: np.ndarray, shape: Shape) -> np.ndarray:
        """The mask as each query group's [M, N] scores see it, broadcast to `shape` [G, M, N] without a copy."""
        bm, hm, sm, nm = self.mask_dims
        return np.broadcast_to(mask.reshape(bm * hm, sm, nm)[self.mask_groups()], shape)

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


@dataclass(frozen=True)
class Blocking:
    """How the kernel cuts its work for the host: vectors of `lanes` floats; keys in blocks of `key_block` (a
    multiple of lanes), a block's keys (or values) taking at most half of L1; query rows in blocks of up to
    `row_block` rows of one group, which take each key block in turn while it is in L1; the weighted sum over
    `col_vectors` vectors of output columns at a time, its accumulators in registers; and whether a score's dot
    product is a vector one (D above `_SCALAR_SCORE_MAX_D`) or a scalar loop."""

    lanes: int
    key_block: int
    row_block: int
    col_vectors: int
    vector_scores: bool


# Up to this D a key's dot product fills at most one vector, so the scores are computed one key at a time in a
# scalar loop (see the module docstring) rather than a vector of keys at a time.
_SCALAR_SCORE_MAX_D = 8
# Query rows sharing each key block: each key block is then read from L2 or L3 once per ROW_BLOCK rows instead of
# once per row; the rows' scores, running max and sum take a few KiB of stack.
ROW_BLOCK = 16
# The largest key block: a longer one adds little once the per-block work (max, rescale, loads and stores of the
# output row) is a few percent of the block's, and costs scratch.
MAX_KEY_BLOCK = 128
# Accumulator vectors of one pass of the weighted sum: with a broadcast p and the value loads as operands this
# leaves registers to spare on a host with 16.
MAX_COL_VECTORS = 8
_F32_LOWEST = -3.4028234663852886e38  # -FLT_MAX: the running max starts here, never at -inf


def blocking(host: HostCpu, d: int, dv: int) -> Blocking:
    """The blocking for heads of width d (q, k) and dv (v, out) on `host`."""
    lanes = host.lanes
    widest = max(d, dv, 1)
    key_block = max(lanes, min(MAX_KEY_BLOCK, host.l1d_bytes // 2 // (4 * widest)) // lanes * lanes)
    col_vectors = max(1, min(MAX_COL_VECTORS, -(-dv // lanes)))
    return Blocking(lanes, key_block, ROW_BLOCK, col_vectors, d > _SCALAR_SCORE_MAX_D)


class _Attention:
    """Emits the kernel: row blocks over each tile's rows, key blocks over each row block, and per row of a
    block its scores, online-softmax update and weighted sum for the key block (see the module docstring)."""

    def __init__(self, spec: KernelSpec, lay: _Layout, blk: Blocking):
        self.spec, self.lay, self.blk = spec, lay, blk
        self.kind = mask_kind(spec.attrs) if lay.mask else None
        self.kb = kb = KernelBuilder(spec, ["f32", "f32", "f32"] + ([self.kind] if self.kind else []))
        self.b = b = kb.b
        self.q_ptr, self.k_ptr, self.v_ptr = kb.inputs[:3]
        self.mask_ptr = kb.inputs[3] if lay.mask else None
        self.vt = vector(blk.lanes)
        # The scratch lives in the entry block, so the stack frame is set up once per call.
        self.scores = self.scratch(blk.row_block * blk.key_block, "scores")
        self.row_max = self.scratch(blk.row_block, "row_max")
        self.row_sum = self.scratch(blk.row_block, "row_sum")
        self.rescale = self.scratch(blk.row_block, "rescale")
        self.next_row = b.alloca(I64, name="next_row")

    def scratch(self, floats: int, name: str) -> ir.Value:
        slot = self.b.alloca(ir.ArrayType(F32, floats), name=name)
        slot.align = 64
        return self.b.gep(slot, [i64(0), i64(0)], inbounds=True)

    # ------------------------------------------------------------------------------------------ vector helpers

    def fma(self, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
        if self.spec.host.fma:
            return self.kb.vector_fma(x, y, z)
        return self.b.fadd(self.b.fmul(x, y), z)

    def lanes_below(self, count: ir.Value) -> ir.Value:
        """The lanes whose index is below `count` (an i64), as an <L x i1> mask."""
        lanes = self.blk.lanes
        index = ir.Constant(ir.VectorType(I32, lanes), list(range(lanes)))
        # 32-bit lanes: a compare of the float vector's width, where 64-bit ones take two and a pack.
        return self.b.icmp_signed("<", index, splat(self.b, self.b.trunc(count, I32), lanes))

    def shuffle(self, x: ir.Value, y: ir.Value, lanes: Sequence[int]) -> ir.Value:
        return self.b.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, len(lanes)), list(lanes)))

    def transposed_sum(self, vectors: list[ir.Value]) -> ir.Value:
        """The vector whose lane t is the sum of the lanes of vectors[t] (L vectors of L lanes): within each
        4-lane chunk, lanes 0 + 2 and 1 + 3 of two vectors, interleaved; then those of two such sums, which leaves
        one total per vector and chunk; then pairs of chunks. Each level is two shuffles (x86's unpck and
        vperm2f128) and an add, and every lane is summed by the same tree, whichever lane it ends in."""
        lanes = self.blk.lanes
        level = vectors
        for pick in ((0, lanes, 1, lanes + 1), (0, 1, lanes, lanes + 1)):
            lo = [c + i for c in range(0, lanes, 4) for i in pick]
            hi = [i + 2 for i in lo]
            level = self.pairwise_sums(level, lo, hi)
        while len(level) > 1:
            units = lanes // 4
            lo = [k * lanes + 4 * u + i for k in (0, 1) for u in range(0, units, 2) for i in range(4)]
            hi = [i + 4 for i in lo]
            level = self.pairwise_sums(level, lo, hi)
        return level[0]

    def pairwise_sums(self, level: list[ir.Value], lo: list[int], hi: list[int]) -> list[ir.Value]:
        """Each pair x, y of `level` as shuffle(x, y, lo) + shuffle(x, y, hi)."""
        return [self.b.fadd(self.shuffle(x, y, lo), self.shuffle(x, y, hi))
                for x, y in zip(level[::2], level[1::2], strict=True)]

    def horizontal(self, x: ir.Value, combine: Callable[[ir.Value, ir.Value], ir.Value]) -> ir.Value:
        """combine(...) of x's lanes, halving the vector each step: a fixed tree."""
        width = self.blk.lanes
        while width > 1:
            width //= 2
            x = combine(self.shuffle(x, x, range(width)), self.shuffle(x, x, range(width, 2 * width)))
        return self.b.extract_element(x, ir.Constant(I32, 0))

    def larger(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """x where x > y, else y: a NaN x is passed over (y never holds one)."""
        return self.b.select(self.b.fcmp_ordered(">", x, y), x, y)

    def masked_bytes(self, ptr: ir.Value, mask: ir.Value) -> ir.Value:
        """The bytes at `ptr` whose lane of `mask` is set, 0 elsewhere (the others are not read)."""
        bt = ir.VectorType(ir.IntType(8), self.blk.lanes)
        fn = self.kb.declare(f"llvm.masked.load.v{bt.count}i8.p0", bt, [bt.as_pointer(), I32, mask.type, bt])
        return self.b.call(fn, [self.b.bitcast(ptr, bt.as_pointer()), ir.Constant(I32, 1), mask, ir.Constant(bt, None)])

    # ------------------------------------------------------------------------------------------ scores

    def masked_score(self, s: ir.Value, entry: ir.Value) -> ir.Value:
        """The scaled score s (a float or a vector) with the mask's entry applied."""
        b = self.b
        if self.lay.mask == "additive":
            return b.fadd(s, entry)
        if self.kind == "f32":
            seen = b.fcmp_unordered("!=", entry, ir.Constant(entry.type, 0.0))
        else:
            seen = b.icmp_unsigned("!=", entry, ir.Constant(entry.type, 0))
        return b.select(seen, s, ir.Constant(s.type, float("-inf")))

    def score_vector(self, q_row: ir.Value, k_mat: ir.Value, mask_row: ir.Value | None, j: ir.Value,
                     valid: ir.Value) -> ir.Value:
        """The scores of keys j .. j + L of row q_row, the first `valid` of them real: lanes from `valid` on read
        key j again (never past the visible keys), and the caller leaves them out."""
        b, lanes, d = self.b, self.blk.lanes, self.lay.d
        base = b.gep(k_mat, [b.mul(j, i64(d))], inbounds=True)
        keys = [base] + [b.gep(base, [b.select(b.icmp_signed("<", i64(t), valid), i64(t * d), i64(0))],
                               inbounds=True) for t in range(1, lanes)]
        zeros = [ir.Constant(self.vt, 0.0)] * lanes

        def chunk(c: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
            at = b.mul(c, i64(lanes))
            qv = load_vector(b, b.gep(q_row, [at], inbounds=True), lanes)
            return [self.fma(qv, load_vector(b, b.gep(key, [at], inbounds=True), lanes), acc)
                    for key, acc in zip(keys, accs, strict=True)]

        accs = loop(b, i64(0), i64(d // lanes), zeros, chunk, name="d") if d >= lanes else zeros
        if d % lanes:
            at = i64(d - d % lanes)
            tail = ir.Constant(ir.VectorType(ir.IntType(1), lanes), [t < d % lanes for t in range(lanes)])
            qv = self.kb.masked_load(b.gep(q_row, [at], inbounds=True), tail)
            accs = [self.fma(qv, self.kb.masked_load(b.gep(key, [at], inbounds=True), tail), acc)
                    for key, acc in zip(keys, accs, strict=True)]
        s = b.fmul(self.transposed_sum(accs), ir.Constant(self.vt, self.lay.scale))
        if mask_row is None:
            return s
        if self.lay.mask_dims[3] == 1:
            return self.masked_score(s, splat(b, load_at(b, mask_row, i64(0)), lanes))
        at = b.gep(mask_row, [j], inbounds=True)
        lanes_in = self.lanes_below(valid)
        entries = self.kb.masked_load(at, lanes_in) if self.kind != "bool" else self.masked_bytes(at, lanes_in)
        return self.masked_score(s, entries)

    def score_scalar(self, q_row: ir.Value, k_mat: ir.Value, mask_row: ir.Value | None, j: ir.Value) -> ir.Value:
        """The score of key j: the dot product over D in order of d, scaled, then the mask's part."""
        b, d = self.b, self.lay.d
        k_row = b.gep(k_mat, [b.mul(j, i64(d))], inbounds=True)
        total = b.fmul(load_at(b, q_row, i64(0)), load_at(b, k_row, i64(0)))
        for c in range(1, d):
            total = b.fadd(total, b.fmul(load_at(b, q_row, i64(c)), load_at(b, k_row, i64(c)), flags=CONTRACT),
                           flags=CONTRACT)
        s = b.fmul(total, f32(self.lay.scale))
        if mask_row is None:
            return s
        return self.masked_score(s, load_at(b, mask_row, j if self.lay.mask_dims[3] > 1 else i64(0)))

    def block_scores(self, row: ir.Value, q_row: ir.Value, k_mat: ir.Value, mask_row: ir.Value | None,
                     j0: ir.Value, count: ir.Value) -> None:
        """Keys j0 .. j0 + count of one row: its scores, then the running max, the rescale of what it summed
        before, and p = exp(s - max) in place of the scores, totalled into the running sum."""
        b, lanes = self.b, self.blk.lanes
        s_row = b.gep(self.scores, [b.mul(row, i64(self.blk.key_block))], inbounds=True)
        vectors = ceil_div(b, count, lanes)
        lowest = f32(_F32_LOWEST)
        if self.blk.vector_scores:
            def score(g: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                first = b.mul(g, i64(lanes))
                valid = smin(b, i64(lanes), b.sub(count, first))
                s = self.score_vector(q_row, k_mat, mask_row, b.add(j0, first), valid)
                store_vector(b, s, b.gep(s_row, [first], inbounds=True), 4 * lanes)
                seen = b.and_(self.lanes_below(valid), b.fcmp_ordered(">", s, acc[0]))
                return [b.select(seen, s, acc[0])]

            (tops,) = loop(b, i64(0), vectors, [splat(b, lowest, lanes)], score, name="score")
            top = self.horizontal(tops, self.larger)
        else:
            def score_one(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                s = self.score_scalar(q_row, k_mat, mask_row, b.add(j0, j))
                store_at(b, s, s_row, j)
                return [self.larger(s, acc[0])]

            (top,) = loop(b, i64(0), count, [lowest], score_one, name="max")
            no_vectorize(self.kb.module, top)
        old_max = load_at(b, self.row_max, row)
        new_max = self.larger(top, old_max)
        rescale = emit_vector_exp(b, b.fsub(old_max, new_max))
        shift = splat(b, new_max, lanes)

        def exponentiate(g: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
            first = b.mul(g, i64(lanes))
            at = b.gep(s_row, [first], inbounds=True)
            p = emit_vector_exp(b, b.fsub(load_vector(b, at, lanes, 4 * lanes), shift))
            p = b.select(self.lanes_below(b.sub(count, first)), p, ir.Constant(self.vt, 0.0))
            store_vector(b, p, at, 4 * lanes)
            return [b.fadd(acc[0], p)]

        (sums,) = loop(b, i64(0), vectors, [ir.Constant(self.vt, 0.0)], exponentiate, name="exp")
        total = self.horizontal(sums, b.fadd)
        old_sum = load_at(b, self.row_sum, row)
        store_at(b, b.fadd(b.fmul(old_sum, rescale, flags=CONTRACT), total, flags=CONTRACT), self.row_sum, row)
        store_at(b, new_max, self.row_max, row)
        store_at(b, rescale, self.rescale, row)

    # ------------------------------------------------------------------------------------------ weighted sum

    def block_values(self, row: ir.Value, o_row: ir.Value, v_mat: ir.Value, j0: ir.Value, count: ir.Value,
                     c0: ir.Value, c1: ir.Value) -> None:
        """o[c0:c1] = o * rescale + sum_j p_j v[j0 + j] over the block's keys, col_vectors vectors of columns
        at a time; a pass over fewer columns reads and writes through lane masks."""
        b, kb, lanes, dv = self.b, self.kb, self.blk.lanes, self.lay.dv
        nvec = self.blk.col_vectors
        width = nvec * lanes
        p_row = b.gep(self.scores, [b.mul(row, i64(self.blk.key_block))], inbounds=True)
        v_block = b.gep(v_mat, [b.mul(j0, i64(dv))], inbounds=True)
        rescale = splat(b, load_at(b, self.rescale, row), lanes)
        with for_range(b, i64(0), ceil_div(b, b.sub(c1, c0), width), "cols") as pc:
            c = b.add(c0, b.mul(pc, i64(width)))
            cols = smin(b, i64(width), b.sub(c1, c))
            # Not inbounds: in a pass over fewer columns the last vectors' addresses may lie past the output; their
            # lanes are masked off, so nothing there is read or written.
            o_at = [b.gep(o_row, [b.add(c, i64(v * lanes))]) for v in range(nvec)]

            def run(masks: list[ir.Value] | None) -> None:
                def read(ptr: ir.Value, v: int) -> ir.Value:
                    return load_vector(b, ptr, lanes) if masks is None else kb.masked_load(ptr, masks[v])

                accs = [b.fmul(read(p, v), rescale) for v, p in enumerate(o_at)]

                def key(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                    p = splat(b, load_at(b, p_row, j), lanes)
                    v_row = b.gep(v_block, [b.add(b.mul(j, i64(dv)), c)], inbounds=True)
                    return [self.fma(p, read(b.gep(v_row, [i64(v * lanes)]), v), a)
                            for v, a in enumerate(acc)]

                accs = loop(b, i64(0), count, accs, key, name="key")
                for v, (acc, p) in enumerate(zip(accs, o_at, strict=True)):
                    if masks is None:
                        store_vector(b, acc, p)
                    else:
                        kb.masked_store(acc, p, masks[v])

            with b.if_else(b.icmp_signed("==", cols, i64(width))) as (whole, edge):
                with whole:
                    run(None)
                with edge:
                    run([self.lanes_below(b.sub(cols, i64(v * lanes))) for v in range(nvec)])

    # ------------------------------------------------------------------------------------------ loops

    def visible(self, r: ir.Value) -> ir.Value:
        lay = self.lay
        return causal_count(self.b, r, lay.m, lay.n, lay.diagonal) if lay.causal else i64(lay.n)

    def mask_row(self, r: ir.Value, group: ir.Value) -> ir.Value | None:
        if self.mask_ptr is None:
            return None
        b, lay = self.b, self.lay
        _, _, sm, nm = lay.mask_dims
        start = b.mul(lay.mask_group(b, group), i64(sm * nm))
        if sm > 1:
            start = b.add(start, b.mul(b.urem(r, i64(lay.m)), i64(nm)))
        return b.gep(self.mask_ptr, [start], inbounds=True)

    def row_block(self, rb: ir.Value, re: ir.Value, c0: ir.Value, c1: ir.Value) -> None:
        """Rows rb .. re of one group, each key block taken by every row in turn."""
        b, lay, blk = self.b, self.lay, self.blk
        d, dv = lay.d, lay.dv
        group = b.udiv(rb, i64(lay.m))
        kv = lay.kv_group(b, group)
        k_mat = b.gep(self.k_ptr, [b.mul(kv, i64(lay.n * d))], inbounds=True)
        v_mat = b.gep(self.v_ptr, [b.mul(kv, i64(lay.n * dv))], inbounds=True)
        rows = b.sub(re, rb)

        def q_row(r: ir.Value) -> ir.Value:
            return b.gep(self.q_ptr, [b.mul(r, i64(d))], inbounds=True)

        def o_row(r: ir.Value) -> ir.Value:
            return b.gep(self.kb.out, [b.mul(r, i64(dv))], inbounds=True)

        def count(r: ir.Value, j0: ir.Value) -> ir.Value:
            """The keys of the block starting at j0 that row r sees (0 or less: none)."""
            return smin(b, i64(blk.key_block), b.sub(self.visible(r), j0))

        with for_range(b, i64(0), rows, "start") as i:
            store_at(b, f32(_F32_LOWEST), self.row_max, i)
            store_at(b, f32(0.0), self.row_sum, i)
            out = o_row(b.add(rb, i))
            with for_range(b, c0, c1, "zero") as c:
                store_at(b, f32(0.0), out, c)
        # Causal rows see more keys the later they are in the group: the block's last row sees the most.
        blocks = ceil_div(b, self.visible(b.sub(re, i64(1))), blk.key_block)
        with for_range(b, i64(0), blocks, "kblock") as kblock:
            j0 = b.mul(kblock, i64(blk.key_block))
            with for_range(b, i64(0), rows, "score_row") as i:
                r = b.add(rb, i)
                keys = count(r, j0)
                with b.if_then(b.icmp_signed(">", keys, i64(0))):
                    self.block_scores(i, q_row(r), k_mat, self.mask_row(r, group), j0, keys)
            with for_range(b, i64(0), rows, "value_row") as i:
                r = b.add(rb, i)
                keys = count(r, j0)
                with b.if_then(b.icmp_signed(">", keys, i64(0))):
                    self.block_values(i, o_row(r), v_mat, j0, keys, c0, c1)
        with for_range(b, i64(0), rows, "finish") as i:
            total = load_at(b, self.row_sum, i)
            # A row that sees no key, or whose every p is 0 (a mask hides every key), is 0: divide by 1.
            total = b.select(b.fcmp_ordered("==", total, f32(0.0)), f32(1.0), total)
            out = o_row(b.add(rb, i))
            with for_range(b, c0, c1, "norm") as c:
                store_at(b, b.fdiv(load_at(b, out, c), total), out, c)

    def emit(self) -> KernelIR:
        b, kb, lay = self.b, self.kb, self.lay
        with kb.for_tiles() as (r0, r1, c0, c1):
            with b.if_then(b.icmp_signed("<", c0, c1)):
                b.store(r0, self.next_row)
                with while_loop(b, lambda: b.icmp_signed("<", b.load(self.next_row), r1), "rows"):
                    rb = b.load(self.next_row)
                    group_end = b.mul(b.add(b.udiv(rb, i64(lay.m)), i64(1)), i64(lay.m))
                    re = smin(b, smin(b, r1, b.add(rb, i64(self.blk.row_block))), group_end)
                    b.store(re, self.next_row)
                    self.row_block(rb, re, c0, c1)
        return kb.finish()


def lower_attention(spec: KernelSpec, blk: Blocking | None = None) -> KernelIR:
    """The kernel of `spec`, blocked for spec.host unless `blk` says otherwise."""
    lay = _check(spec)
    return _Attention(spec, lay, blk or blocking(spec.host, lay.d, lay.dv)).emit()


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
        kv = lay.kv_groups()
        s = np.einsum("gmd,gnd->gmn", q.reshape(lay.g, lay.m, lay.d), k[kv]) * lay.scale
        if lay.causal:
            visible = np.broadcast_to(causal_visible(lay.m, lay.n, lay.diagonal), s.shape)
        else:
            visible = np.ones(s.shape, dtype=bool)
        if lay.mask:
            entries = lay.mask_entries(inputs[3], s.shape)
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
