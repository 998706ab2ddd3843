"""Batched matmul with a transposed right operand: out[g, m, n] = sum_k a[g, m, k] * b[gb, n, k].

Inputs, in order: a [G, M, K], b [Gb, N, K] (Gb is 1 or G), then the optional epilogue operands that the
attrs name: bias [N] when attrs["bias"], residual [G, M, N] when attrs["residual"]. The fused epilogue is

    out = residual + act(a @ b^T + bias),   act = gelu when attrs["epilogue"] == "gelu", else identity

with attrs["approximate"] ("none" = erf, or "tanh") choosing the GELU as torch does. This is the order
of a transformer block (linear -> gelu, and x + linear(...)), so a legalisation pass can fold the
following gelu and residual add into the matmul and save a full round trip of the output through memory.

b is stored [N, K] so that every output element is a dot product of two contiguous rows; with
reassociation allowed LLVM vectorises that reduction. Output columns are computed BLOCK at a time
so each loaded element of a feeds BLOCK dot products (register blocking), which matters most for
the executor's many narrow tiles (e.g. 1 row x 8 columns); rows are taken two at a time, so each loaded
element of b also feeds two rows.
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
from wsc.ops.base import ACCUMULATOR_BYTES, KernelFactory, KernelOp, Shape, register, rows_in_flight
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
    smin,
    store_at,
)
from wsc.ops.gelu import check_approximate, emit_gelu, gelu_reference

BLOCK = 4
ROWS = 2
# Columns of b processed per sweep over the tile's rows: enough b rows to fill most of a 32 KiB L1
# data cache, so they are reused from L1 by every row while rows of a stream from L2. Without
# this, a wide tile re-reads all of b from memory for every output row.
L1_BYTES = 24 * 1024


def _chunk_columns(k_dim: int) -> int:
    fit = L1_BYTES // max(1, 4 * k_dim)
    return max(BLOCK, fit - fit % BLOCK)


@dataclass(frozen=True)
class _Matmul:
    g: int
    m: int
    n: int
    k: int
    gb: int
    bias: bool
    residual: bool
    epilogue: str
    approximate: str


def _check(spec: KernelSpec) -> _Matmul:
    bias = bool(spec.attrs.get("bias", False))
    residual = bool(spec.attrs.get("residual", False))
    epilogue = spec.attrs.get("epilogue", "none")
    if epilogue not in ("none", "gelu"):
        raise ValueError(f"matmul: epilogue must be 'none' or 'gelu', got {epilogue!r}")
    approximate = check_approximate("matmul", spec.attrs.get("approximate", "none"))
    names = ["a", "b"] + ["bias"] * bias + ["residual"] * residual
    if len(spec.out_shape) != 3 or len(spec.in_shapes) != len(names):
        raise ValueError(f"matmul: expected out [G, M, N] and inputs {', '.join(names)}; got {spec}")
    g, m, n = spec.out_shape
    a_shape, b_shape = spec.in_shapes[0], spec.in_shapes[1]
    if len(a_shape) != 3 or a_shape[:2] != (g, m):
        raise ValueError(f"matmul: a has shape {a_shape}, expected [{g}, {m}, K]")
    k = a_shape[2]
    if len(b_shape) != 3 or b_shape[0] not in (1, g) or b_shape[1:] != (n, k):
        raise ValueError(f"matmul: b has shape {b_shape}, expected [1 or {g}, {n}, {k}]")
    if bias and spec.in_shapes[2] != (n,):
        raise ValueError(f"matmul: bias has shape {spec.in_shapes[2]}, expected [{n}]")
    if residual and spec.in_shapes[-1] != (g, m, n):
        raise ValueError(f"matmul: residual has shape {spec.in_shapes[-1]}, expected [{g}, {m}, {n}]")
    return _Matmul(g, m, n, k, b_shape[0], bias, residual, str(epilogue), approximate)


def lower_matmul(spec: KernelSpec) -> KernelIR:
    mm = _check(spec)
    g_dim, m_dim, n_dim, k_dim, gb = mm.g, mm.m, mm.n, mm.k, mm.gb
    kb = KernelBuilder(spec, ["f32"] * len(spec.in_shapes))
    b = kb.b
    a_ptr, b_ptr = kb.inputs[0], kb.inputs[1]
    bias_ptr = kb.inputs[2] if mm.bias else None
    res_ptr = kb.inputs[-1] if mm.residual else None

    def dots(a_rows: list[ir.Value], b_rows: list[ir.Value]) -> list[list[ir.Value]]:
        """Dot products of every a row with every b row, in one pass over K: accs[i][j] = a_i . b_j."""

        def body(k: ir.Value, flat: list[ir.Value]) -> list[ir.Value]:
            bv = [load_at(b, br, k) for br in b_rows]
            out = []
            for i, ar in enumerate(a_rows):
                av = load_at(b, ar, k)
                for j, bj in enumerate(bv):
                    acc = flat[i * len(b_rows) + j]
                    out.append(b.fadd(acc, b.fmul(av, bj, flags=FAST), flags=FAST))
            return out

        flat = loop(b, i64(0), i64(k_dim), [f32(0.0)] * (len(a_rows) * len(b_rows)), body, name="k")
        return [flat[i * len(b_rows) : (i + 1) * len(b_rows)] for i in range(len(a_rows))]

    def emit_block(n: ir.Value, width: int, rows: list[ir.Value], b_mat: ir.Value) -> None:
        a_rows = [b.gep(a_ptr, [b.mul(r, i64(k_dim))], inbounds=True) for r in rows]
        b_rows = [b.gep(b_mat, [b.mul(b.add(n, i64(j)), i64(k_dim))], inbounds=True) for j in range(width)]
        for r, accs in zip(rows, dots(a_rows, b_rows), strict=True):
            o_row = b.gep(kb.out, [b.mul(r, i64(n_dim))], inbounds=True)
            r_row = None if res_ptr is None else b.gep(res_ptr, [b.mul(r, i64(n_dim))], inbounds=True)
            for j, acc in enumerate(accs):
                col = b.add(n, i64(j))
                if bias_ptr is not None:
                    acc = b.fadd(acc, load_at(b, bias_ptr, col))
                if mm.epilogue == "gelu":
                    acc = emit_gelu(kb, acc, mm.approximate)
                if r_row is not None:
                    acc = b.fadd(load_at(b, r_row, col), acc)
                store_at(b, acc, o_row, col)

    def emit_rows(rows: list[ir.Value], cs: ir.Value, ce: ir.Value) -> None:
        b_mat = b_ptr
        if gb == g_dim and g_dim > 1:  # rows of one call are in one batch (see row_pairs below)
            batch = b.udiv(rows[0], i64(m_dim))
            b_mat = b.gep(b_ptr, [b.mul(batch, i64(n_dim * k_dim))], inbounds=True)
        nblocks = b.sdiv(b.sub(ce, cs), i64(BLOCK))
        with for_range(b, i64(0), nblocks, "nb") as jb:
            emit_block(b.add(cs, b.mul(jb, i64(BLOCK))), BLOCK, rows, b_mat)
        with for_range(b, b.add(cs, b.mul(nblocks, i64(BLOCK))), ce, "n") as n:
            emit_block(n, 1, rows, b_mat)

    # Two rows at a time: each loaded vector of b then feeds two FMAs, which is what moves the inner loop from
    # load-bound to FMA-bound. A batched right operand would need both rows in one batch; those matmuls
    # (attention) are small, so they keep one row at a time.
    row_pairs = ROWS == 2 and not (gb == g_dim and g_dim > 1)
    chunk = _chunk_columns(k_dim)
    with kb.for_tiles() as (r0, r1, c0, c1):
        nchunks = b.sdiv(b.add(b.sub(c1, c0), i64(chunk - 1)), i64(chunk))
        with for_range(b, i64(0), nchunks, "chunk") as ci:
            cs = b.add(c0, b.mul(ci, i64(chunk)))
            ce = smin(b, b.add(cs, i64(chunk)), c1)
            rest = r0
            if row_pairs:
                npairs = b.sdiv(b.sub(r1, r0), i64(2))
                with for_range(b, i64(0), npairs, "rp") as p:
                    r = b.add(r0, b.mul(p, i64(2)))
                    emit_rows([r, b.add(r, i64(1))], cs, ce)
                rest = b.add(r0, b.mul(npairs, i64(2)))
            with for_range(b, rest, r1, "r") as r:
                emit_rows([r], cs, ce)
    return kb.finish()


@register
class Matmul(KernelOp):
    """out = residual + act(a @ b^T + bias) over the output viewed as [rows, N], reducing over K.

    Cost: 2 FLOPs per multiply-add, plus the bias adds; a fused epilogue's FLOPs are added by the fusion.
    SRAM per PE (weight streaming, output-stationary blocks; a tile tr x tc over a K slice of k): its rows of
    the left operand over the slice (tr * k), fp32 accumulators for its block, a double buffer for the
    streamed right operand's column (2 * tc), the bias row, and when K is split a buffer for the fp32 partial
    sums it reduces. In pipelined mode a weight operand stays resident (tc * k) instead of streaming past.
    SRAM traffic of the busiest PE, in elements:
    - multiply-adds: reads 2 * tr * tc * k (one operand element and one partial sum each), writes tr * tc * k;
    - epilogue (bias, gelu, residual), when there is one: reads tr * tc * (1 + [bias] + [residual]), writes
      tr * tc; a fused GELU is computed on the way through and adds no traffic.
    Only one operand is read per multiply-add: the other arrives over the fabric (the streamed weight, or the
    neighbour's activation) and is used straight from the router. Partial sums move at the compute precision:
    4 fp16 FMACs a cycle then read 16 B and write 8 B, exactly a CS-2 PE's ports, which is how the published
    dense rate is reachable. A split K's reduction is the estimate's own term (after the kernel).
    """

    name = "matmul"

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        numel = math.prod(out_shape)
        return 2 * numel * in_shapes[0][-1] + (numel if attrs.get("bias") else 0)

    def reduction_dim(self, graph: Graph, node: Node) -> int:
        return graph[node.inputs[0]].shape[-1]

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        """Its tile of the right operand, `k x tc` (a weight stays for the layer's turn; another value's tile
        is double-buffered, since its rows belong to several groups in turn), the left operand's rows in
        flight over its K slice, their fp32 partial sums, and with a split K the neighbouring slice's
        partial sums arriving; a bias row."""
        tr, tc = self.tile(node, cut)
        held = rows_in_flight(tr)
        k = math.ceil(self.reduction_dim(graph, node) / cut.k_splits)
        bias = tc * size if node.attrs.get("bias") else 0
        partials = held * tc * ACCUMULATOR_BYTES if cut.k_splits > 1 else 0
        right = k * tc * size * (1 if graph[node.inputs[1]].op == "param" else 2)
        return held * k * size + held * tc * ACCUMULATOR_BYTES + right + bias + partials

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        block, k = tr * tc, plan.k_slice
        reads, writes = 2 * block * k, block * k
        bias, residual = bool(node.attrs.get("bias")), bool(node.attrs.get("residual"))
        if bias or residual or node.attrs.get("epilogue", "none") != "none":
            reads += block * (1 + bias + residual)
            writes += block
        return reads * size, writes * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """a as [G, M, K], b as [Gb, N, K] (Gb 1 for a weight), then bias [N] and residual [G, M, N]."""
        ins = [graph[i].shape for i in node.inputs]
        out = node.shape
        a, b = ins[0], ins[1]
        if len(b) == 2:
            g, m = 1, math.prod(out[:-1])
            shapes: list[Shape] = [(1, m, a[-1]), (1, *b)]
        else:
            g, m = math.prod(a[:-2]), a[-2]
            shapes = [(g, m, a[-1]), (math.prod(b[:-2]), b[-2], b[-1])]
        extra = [tuple(s) for s in ins[2:]]
        if node.attrs.get("residual", False):
            extra[-1] = (g, m, out[-1])
        return (g, m, out[-1]), shapes + extra

    def accepts_epilogue(self, node: Node, attrs: Mapping[str, Any]) -> bool:
        """The epilogue is act, then the residual add: nothing follows a residual, and there is one act."""
        if node.dtype != "float32" or node.attrs.get("residual"):
            return False
        return "epilogue" not in attrs or node.attrs.get("epilogue", "none") == "none"

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_matmul(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        a, b = (x.astype(np.float64) for x in inputs[:2])
        out = np.einsum("gmk,gnk->gmn", a, np.broadcast_to(b, (a.shape[0],) + b.shape[1:]))
        if attrs.get("bias", False):
            out = out + inputs[2].astype(np.float64)
        if attrs.get("epilogue", "none") == "gelu":
            out = gelu_reference(out, attrs.get("approximate", "none"))
        if attrs.get("residual", False):
            out = inputs[-1].astype(np.float64) + out
        return out

    def run_k_split(self, node: Node, plan: KernelPlan, args: list[np.ndarray], out_shape: Shape,
                    tiles: np.ndarray, kernel_for: KernelFactory, threads: int) -> np.ndarray:
        """Each K slice's partial sums (the PEs of one slice), then their reduction across PEs as a binary
        tree, then the epilogue (bias, GELU, residual) on the reduced block, every step a JIT kernel over the
        same tiles."""
        shape2d = (plan.rows, plan.cols)

        def run(op: str, shape: Shape, inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
            out = np.full(shape, np.nan, dtype=np.float32)
            kernel_for(op, shape, [x.shape for x in inputs], attrs)(out, inputs, tiles, threads=threads)
            return out

        a, b, extras = args[0], args[1], list(args[2:])
        partials = []
        for k0, k1 in zip(plan.k_bounds[:-1], plan.k_bounds[1:], strict=True):
            a_s, b_s = np.ascontiguousarray(a[..., k0:k1]), np.ascontiguousarray(b[..., k0:k1])
            partials.append(run("matmul", out_shape, [a_s, b_s], {}).reshape(shape2d))
        while len(partials) > 1:
            pairs = [run("add", shape2d, [partials[i], partials[i + 1]], {}) for i in range(0, len(partials) - 1, 2)]
            partials = pairs + partials[len(pairs) * 2:]
        y = partials[0]
        if node.attrs.get("bias"):
            y = run("add", shape2d, [y, extras.pop(0).reshape(1, plan.cols)], {})
        if node.attrs.get("epilogue", "none") == "gelu":
            y = run("gelu", shape2d, [y], {"approximate": node.attrs.get("approximate")})
        if node.attrs.get("residual"):
            y = run("add", shape2d, [y, extras.pop(0).reshape(shape2d)], {})
        return y.reshape(out_shape)
