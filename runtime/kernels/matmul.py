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

from dataclasses import dataclass

from llvmlite import ir

from wsc.runtime.kernels.gelu import check_approximate, emit_gelu
from wsc.runtime.lowering import (
    FAST,
    KernelBuilder,
    KernelIR,
    KernelSpec,
    f32,
    for_range,
    i64,
    load_at,
    loop,
    register_lowering,
    smin,
    store_at,
)

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


@register_lowering("matmul")
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
