"""Batched matmul with a transposed right operand: out[g, m, n] = sum_k a[g, m, k] * b[gb, n, k].

b is stored [N, K] so that every output element is a dot product of two contiguous rows; with
reassociation allowed LLVM vectorises that reduction. Output columns are computed BLOCK at a time
so each loaded element of a feeds BLOCK dot products (register blocking), which matters most for
the executor's many narrow tiles (e.g. 1 row x 8 columns).
"""

from __future__ import annotations

from llvmlite import ir

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
# Columns of b processed per sweep over the tile's rows: enough b rows to fill most of a 32 KiB L1
# data cache, so they are reused from L1 by every row while rows of a stream from L2. Without
# this, a wide tile re-reads all of b from memory for every output row.
L1_BYTES = 24 * 1024


def _chunk_columns(k_dim: int) -> int:
    fit = L1_BYTES // max(1, 4 * k_dim)
    return max(BLOCK, fit - fit % BLOCK)


def _check(spec: KernelSpec) -> tuple[int, int, int, int, int, bool]:
    bias = bool(spec.attrs.get("bias", False))
    if len(spec.out_shape) != 3 or len(spec.in_shapes) != (3 if bias else 2):
        raise ValueError(f"matmul: expected out [G, M, N], a, b{', bias' if bias else ''}; got {spec}")
    g, m, n = spec.out_shape
    a_shape, b_shape = spec.in_shapes[0], spec.in_shapes[1]
    if len(a_shape) != 3 or a_shape[:2] != (g, m):
        raise ValueError(f"matmul: a has shape {a_shape}, expected [{g}, {m}, K]")
    k = a_shape[2]
    if len(b_shape) != 3 or b_shape[0] not in (1, g) or b_shape[1:] != (n, k):
        raise ValueError(f"matmul: b has shape {b_shape}, expected [1 or {g}, {n}, {k}]")
    if bias and spec.in_shapes[2] != (n,):
        raise ValueError(f"matmul: bias has shape {spec.in_shapes[2]}, expected [{n}]")
    return g, m, n, k, b_shape[0], bias


@register_lowering("matmul")
def lower_matmul(spec: KernelSpec) -> KernelIR:
    g_dim, m_dim, n_dim, k_dim, gb, has_bias = _check(spec)
    kb = KernelBuilder(spec, ["f32"] * (3 if has_bias else 2))
    b = kb.b
    a_ptr, b_ptr = kb.inputs[0], kb.inputs[1]
    bias_ptr = kb.inputs[2] if has_bias else None

    def dots(a_row: ir.Value, b_rows: list[ir.Value]) -> list[ir.Value]:
        def body(k: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
            av = load_at(b, a_row, k)
            return [
                b.fadd(acc, b.fmul(av, load_at(b, br, k), flags=FAST), flags=FAST)
                for acc, br in zip(accs, b_rows, strict=True)
            ]

        return loop(b, i64(0), i64(k_dim), [f32(0.0)] * len(b_rows), body, name="k")

    def emit_columns(n: ir.Value, width: int, a_row: ir.Value, b_mat: ir.Value, o_row: ir.Value) -> None:
        b_rows = [b.gep(b_mat, [b.mul(b.add(n, i64(j)), i64(k_dim))], inbounds=True) for j in range(width)]
        for j, acc in enumerate(dots(a_row, b_rows)):
            col = b.add(n, i64(j))
            if bias_ptr is not None:
                acc = b.fadd(acc, load_at(b, bias_ptr, col))
            store_at(b, acc, o_row, col)

    chunk = _chunk_columns(k_dim)
    with kb.for_tiles() as (r0, r1, c0, c1):
        nchunks = b.sdiv(b.add(b.sub(c1, c0), i64(chunk - 1)), i64(chunk))
        with for_range(b, i64(0), nchunks, "chunk") as ci:
            cs = b.add(c0, b.mul(ci, i64(chunk)))
            ce = smin(b, b.add(cs, i64(chunk)), c1)
            with for_range(b, r0, r1, "r") as r:
                a_row = b.gep(a_ptr, [b.mul(r, i64(k_dim))], inbounds=True)
                o_row = b.gep(kb.out, [b.mul(r, i64(n_dim))], inbounds=True)
                b_mat = b_ptr
                if gb == g_dim and g_dim > 1:
                    batch = b.udiv(r, i64(m_dim))
                    b_mat = b.gep(b_ptr, [b.mul(batch, i64(n_dim * k_dim))], inbounds=True)
                nblocks = b.sdiv(b.sub(ce, cs), i64(BLOCK))
                with for_range(b, i64(0), nblocks, "nb") as jb:
                    emit_columns(b.add(cs, b.mul(jb, i64(BLOCK))), BLOCK, a_row, b_mat, o_row)
                with for_range(b, b.add(cs, b.mul(nblocks, i64(BLOCK))), ce, "n") as n:
                    emit_columns(n, 1, a_row, b_mat, o_row)
    return kb.finish()
