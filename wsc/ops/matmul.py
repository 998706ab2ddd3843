"""Batched matmul with a transposed right operand: out[g, m, n] = sum_k a[g, m, k] * b[gb, n, k].

Inputs, in order: a [G, M, K], b [Gb, N, K] (Gb is 1 or G), then the optional epilogue operands that the
attrs name: bias [N] when attrs["bias"], residual [G, M, N] when attrs["residual"]. The fused epilogue is

    out = residual + act(a @ b^T + bias),   act = gelu when attrs["epilogue"] == "gelu", else identity

with attrs["approximate"] ("none" = erf, or "tanh") choosing the GELU as torch does. This is the order
of a transformer block (linear -> gelu, and x + linear(...)), so a legalisation pass can fold the
following gelu and residual add into the matmul and save a full round trip of the output through memory.

b is stored [N, K], a linear layer's weight. The kernel is blocked as BLIS blocks a GEMM (see Blocking): over
each tile, K blocks of B's columns and of A's rows are packed into k-major panels, zero-padded to whole panels
(B's transposed in registers eight rows at a time), and a micro-kernel holds an mr x nr block of the output in
vector registers through a K block, one llvm.fma per accumulator and k. Every output element is therefore one
chain of fp32 fused multiply-adds over k in order (the partial sum kept in the output between K blocks is the
same fp32 value), whatever the tiling, the blocking or the vector width: the result does not depend on how the
partitioner cut the output. Edge micro-tiles run the same vector code on the padded panels and read and write
the output through lane masks. The epilogue is applied to a micro-tile as its last K block is stored, while it
is in L1. Adjacent tiles over the same rows (the executor's column runs) are computed as one tile, which packs
A once rather than once per narrow tile.

The packing buffers come from malloc at each call, since the kernel ABI has no scratch argument; should the
allocation fail, the kernel fills its tiles with NaN, which no check downstream mistakes for a result.
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
    F32,
    I8P,
    I32,
    I64,
    HostCpu,
    KernelBuilder,
    KernelIR,
    KernelSpec,
    ceil_div,
    f32,
    for_range,
    i64,
    load_at,
    load_vector,
    loop,
    smax,
    smin,
    splat,
    store_at,
    store_vector,
    vector,
    while_loop,
)
from wsc.ops.gelu import check_approximate, emit_gelu, gelu_reference

# The K loop of the micro-kernel is unrolled this many times (and K blocks are multiples of it).
UNROLL = 4
# Vectors across a micro-tile's row: two keep the B loads of one K step (NR floats) to one 64-byte line with
# AVX2 and a pair of lines with AVX-512, while leaving most registers to accumulators.
VECTORS_PER_ROW = 2


@dataclass(frozen=True)
class Blocking:
    """How the product is cut for the host (BLIS's five loops).

    A micro-tile of mr rows x nr columns lives in mr * nr / lanes vector registers for a whole K block of kc;
    the B micro-panel it reads (kc x nr) stays in L1 while the A micro-panels of a row block (mc x kc, packed,
    in L2) stream past it; a column block of nc columns of B (kc x nc, packed, in L3) serves every row block.
    """

    lanes: int
    mr: int
    nr: int
    kc: int
    mc: int
    nc: int
    fma: bool


def blocking(host: HostCpu, rows: int, cols: int, k: int) -> Blocking:
    """The blocking for a product of `rows` x `cols` over `k` on `host`."""
    lanes = host.lanes
    nr = VECTORS_PER_ROW * lanes
    # Accumulators mr * VECTORS_PER_ROW, the B vectors of one step and a broadcast must all stay in registers:
    # 6 rows with 16 registers; with 32, 12 rather than the 14 that fit, since 128-token products then waste
    # 4 padded rows instead of 12.
    mr = max(1, min(12, (host.vector_registers - VECTORS_PER_ROW - 1) // VECTORS_PER_ROW))
    # The B micro-panel (kc x nr) as large as L1: each K block reloads and restores the output, so fewer and
    # longer blocks win over leaving L1 room for the A panel, which streams from L2 with the prefetchers'
    # help (measured on Zen 3: kc 512 against 256, +7%). The K blocks are then evened out, so a K just over
    # a block is not left with a sliver.
    kc_max = max(UNROLL * 16, host.l1d_bytes // (4 * nr) // UNROLL * UNROLL)
    k_blocks = max(1, math.ceil(k / kc_max))
    kc = max(1, min(k, _round_up(math.ceil(k / k_blocks), UNROLL)))
    # The packed A block as large as L2 (its panels stream from there; a larger block means fewer passes over
    # B), evened out over the rows like K; an eighth of L3 for the packed B block, as L3 is shared by every
    # core, each packing its own.
    mc_max = max(mr, host.l2_bytes // (4 * kc) // mr * mr)
    mc = _round_up(math.ceil(rows / max(1, math.ceil(rows / mc_max))), mr)
    nc = max(nr, (host.l3_bytes // 8) // (4 * kc) // nr * nr)
    return Blocking(lanes, mr, nr, kc, min(mc, _round_up(rows, mr)), min(nc, _round_up(cols, nr)), host.fma)


def i32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


def transpose8(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The columns of the 8 x 8 matrix whose rows are eight <8 x float>: three rounds of two-input shuffles
    (interleave pairs, then pairs of pairs, then halves), which x86 does as unpck, shufps and vperm2f128."""
    def shuffle(x: ir.Value, y: ir.Value, lanes: list[int]) -> ir.Value:
        return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), 8), lanes))

    lo1, hi1 = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    lo2, hi2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    lo4, hi4 = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    a = []
    for j in range(0, 8, 2):
        a += [shuffle(rows[j], rows[j + 1], lo1), shuffle(rows[j], rows[j + 1], hi1)]
    # a[2p] holds k = 0, 1, 4, 5 of rows 2p, 2p + 1; a[2p + 1] holds k = 2, 3, 6, 7.
    q = []
    for h in (0, 4):
        q += [shuffle(a[h], a[h + 2], lo2), shuffle(a[h], a[h + 2], hi2),
              shuffle(a[h + 1], a[h + 3], lo2), shuffle(a[h + 1], a[h + 3], hi2)]
    # q[c + 4h] holds k = c and c + 4 of rows 4h .. 4h + 3.
    return [shuffle(q[c % 4], q[c % 4 + 4], lo4 if c < 4 else hi4) for c in range(8)]


def _round_up(x: int, multiple: int) -> int:
    return max(multiple, -(-x // multiple) * multiple)


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


class _Gemm:
    """Emits the blocked product into one kernel: packing, the micro-kernel and the loops around them."""

    def __init__(self, spec: KernelSpec, mm: _Matmul, blk: Blocking):
        self.mm, self.blk = mm, blk
        self.kb = kb = KernelBuilder(spec, ["f32"] * len(spec.in_shapes))
        self.b = kb.b
        self.a_ptr, self.b_ptr = kb.inputs[0], kb.inputs[1]
        self.bias_ptr = kb.inputs[2] if mm.bias else None
        self.res_ptr = kb.inputs[-1] if mm.residual else None
        self.vt = vector(blk.lanes)
        self.nv = blk.nr // blk.lanes
        self.k_blocks = max(1, math.ceil(mm.k / blk.kc))
        # Registers of the micro-tile, as allocas the optimiser promotes: branches (first K block or not, edge
        # tile or not) store them, the K loop carries them.
        self.acc_slots = [self.b.alloca(self.vt, name=f"acc{i}") for i in range(blk.mr * self.nv)]
        self.tile_slot = self.b.alloca(I64, name="next_tile")
        self.c_end_slot = self.b.alloca(I64, name="c_end")
        # Packing reads a missing row (past a tile's last row or column) from here: zeros pad the panels.
        zeros_t = ir.ArrayType(F32, max(1, blk.kc))
        zeros = ir.GlobalVariable(kb.module, zeros_t, name="zero_row")
        zeros.global_constant = True
        zeros.linkage = "internal"
        zeros.initializer = ir.Constant(zeros_t, None)
        zeros.align = 64
        self.zero_row = self.b.gep(zeros, [i64(0), i64(0)], inbounds=True)
        # B's buffer follows A's at a 64-byte boundary, so every packed panel is aligned for vector loads.
        self.a_pack_floats = _round_up(blk.mc * blk.kc, 16)
        self.b_pack_floats = blk.nc * blk.kc

    # ------------------------------------------------------------------------------------------- packing

    def pack_panel(self, out: ir.Value, src: ir.Value, row: ir.Value, valid: ir.Value, width: int,
                   pc: ir.Value, kc: ir.Value) -> None:
        """Rows row .. row + width of src (a row being K floats) over K columns pc .. pc + kc, laid out k-major
        (the `width` values of one k adjacent, as the micro-kernel reads them); rows from `valid` on are zeros.

        Eight rows at a time are read as eight vectors of eight k and transposed in registers, so both the
        reads (along each row) and the writes (along the panel) are whole vectors; the k left over, and the
        rows of a width that is not a multiple of eight, are copied one float at a time.
        """
        b, k_dim = self.b, self.mm.k
        rows = []
        for j in range(width):
            inside = b.icmp_signed("<", i64(j), valid)
            # The address of a missing row is never read: the select picks the zero row instead.
            at = b.gep(src, [b.add(b.mul(b.add(row, i64(j)), i64(k_dim)), pc)])
            rows.append(b.select(inside, at, self.zero_row))
        groups = width // 8
        vector_k = b.mul(b.udiv(kc, i64(8)), i64(8)) if groups else i64(0)
        if groups:
            with for_range(b, i64(0), b.udiv(kc, i64(8)), "pk8") as kb8:
                k = b.mul(kb8, i64(8))
                for grp in range(groups):
                    loaded = [load_vector(b, b.gep(r, [k], inbounds=True), 8) for r in rows[grp * 8:grp * 8 + 8]]
                    for kk, column in enumerate(transpose8(b, loaded)):
                        at = b.add(b.mul(b.add(k, i64(kk)), i64(width)), i64(grp * 8))
                        store_vector(b, column, b.gep(out, [at], inbounds=True), 32 if width % 8 == 0 else 4)
        def copy(rows_from: int, k_from: ir.Value) -> None:
            with for_range(b, k_from, kc, "pk") as k:
                base = b.mul(k, i64(width))
                for j in range(rows_from, width):
                    store_at(b, load_at(b, rows[j], k), out, b.add(base, i64(j)))

        if groups:
            copy(0, vector_k)
        if groups * 8 < width:
            copy(groups * 8, i64(0))

    # -------------------------------------------------------------------------------------- micro-kernel

    def k_step(self, ap: ir.Value, bp: ir.Value, k: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
        b, blk, kb = self.b, self.blk, self.kb
        bk = b.gep(bp, [b.mul(k, i64(blk.nr))], inbounds=True)
        bv = [load_vector(b, b.gep(bk, [i64(v * blk.lanes)], inbounds=True), blk.lanes, 4 * blk.lanes)
              for v in range(self.nv)]
        ak = b.gep(ap, [b.mul(k, i64(blk.mr))], inbounds=True)
        out = list(accs)
        for i in range(blk.mr):
            a = splat(b, load_at(b, ak, i64(i)), blk.lanes)
            for v in range(self.nv):
                n = i * self.nv + v
                if blk.fma:
                    out[n] = kb.vector_fma(a, bv[v], out[n])
                else:
                    out[n] = b.fadd(b.fmul(a, bv[v]), out[n])
        return out

    def masks(self, mr_eff: ir.Value, nr_eff: ir.Value) -> list[list[ir.Value]]:
        """Per accumulator: the lanes inside the tile (its row exists, its column does)."""
        b, blk = self.b, self.blk
        lanes_t = ir.VectorType(I64, blk.lanes)
        cols = splat(b, nr_eff, blk.lanes)
        col_ok = [b.icmp_signed("<", ir.Constant(lanes_t, [v * blk.lanes + j for j in range(blk.lanes)]), cols)
                  for v in range(self.nv)]
        out = []
        for i in range(blk.mr):
            row_ok = splat(b, b.icmp_signed("<", i64(i), mr_eff), blk.lanes)
            out.append([b.and_(row_ok, c) for c in col_ok])
        return out

    def c_rows(self, base: ir.Value, row: ir.Value, col: ir.Value) -> list[list[ir.Value]]:
        """Addresses of each accumulator's vector in an [rows, N] array (rows past the tile are never accessed:
        their lanes are masked off)."""
        b, blk, n_dim = self.b, self.blk, self.mm.n
        out = []
        for i in range(blk.mr):
            at = b.gep(base, [b.add(b.mul(b.add(row, i64(i)), i64(n_dim)), col)])
            out.append([b.gep(at, [i64(v * blk.lanes)]) for v in range(self.nv)])
        return out

    def read(self, ptrs: list[list[ir.Value]], masks: list[list[ir.Value]] | None) -> list[ir.Value]:
        b, kb, lanes = self.b, self.kb, self.blk.lanes
        if masks is None:
            return [load_vector(b, p, lanes) for row in ptrs for p in row]
        return [kb.masked_load(p, m) for row, mrow in zip(ptrs, masks, strict=True)
                for p, m in zip(row, mrow, strict=True)]

    def write(self, values: list[ir.Value], ptrs: list[list[ir.Value]], masks: list[list[ir.Value]] | None) -> None:
        flat = [p for row in ptrs for p in row]
        flat_masks = [m for row in masks for m in row] if masks is not None else [None] * len(flat)
        for value, p, m in zip(values, flat, flat_masks, strict=True):
            if m is None:
                store_vector(self.b, value, p)
            else:
                self.kb.masked_store(value, p, m)

    def finish_tile(self, accs: list[ir.Value], row: ir.Value, col: ir.Value, masks: list[list[ir.Value]] | None,
                    epilogue: bool) -> None:
        """Store the accumulators; after the last K block with the bias added (and the residual when there is
        no GELU to apply first)."""
        b, blk, mm, kb = self.b, self.blk, self.mm, self.kb
        values = accs
        if epilogue and self.bias_ptr is not None:
            at = b.gep(self.bias_ptr, [col])
            ptrs = [b.gep(at, [i64(v * blk.lanes)]) for v in range(self.nv)]
            if masks is None:
                bias = [load_vector(b, p, blk.lanes) for p in ptrs]
            else:
                bias = [kb.masked_load(p, m) for p, m in zip(ptrs, masks[0], strict=True)]
            values = [b.fadd(x, bias[n % self.nv]) for n, x in enumerate(values)]
        if epilogue and self.res_ptr is not None and mm.epilogue != "gelu":
            residual = self.read(self.c_rows(self.res_ptr, row, col), masks)
            values = [b.fadd(r, x) for r, x in zip(residual, values, strict=True)]
        self.write(values, self.c_rows(self.kb.out, row, col), masks)

    def gelu_pass(self, row: ir.Value, col: ir.Value, mr_eff: ir.Value, nr_eff: ir.Value) -> None:
        """out = residual + gelu(out) over the micro-tile just stored (still in L1); the loop vectoriser turns
        the scalar GELU into vector code, with the rounding the gelu kernel has."""
        b, n_dim = self.b, self.mm.n
        with for_range(b, i64(0), mr_eff, "gr") as i:
            base = b.add(b.mul(b.add(row, i), i64(n_dim)), col)
            o_row = b.gep(self.kb.out, [base], inbounds=True)
            r_row = None if self.res_ptr is None else b.gep(self.res_ptr, [base], inbounds=True)
            with for_range(b, i64(0), nr_eff, "gc") as j:
                y = emit_gelu(self.kb, load_at(b, o_row, j), self.mm.approximate)
                if r_row is not None:
                    y = b.fadd(load_at(b, r_row, j), y)
                store_at(b, y, o_row, j)

    def prefetch_tile(self, row: ir.Value, col: ir.Value) -> None:
        """Ask for the output lines of the micro-tile at (row, col): the accumulators start from them, and a
        miss there would stall every FMA of the K loop behind it. A prefetch never faults, so a tile past the
        output's end costs nothing but the request."""
        b, blk, n_dim = self.b, self.blk, self.mm.n
        fn = self.kb.declare("llvm.prefetch.p0", ir.VoidType(), [I8P, I32, I32, I32])
        for i in range(blk.mr):
            at = b.gep(self.kb.out, [b.add(b.mul(b.add(row, i64(i)), i64(n_dim)), col)])
            for offset in range(0, blk.nr, 16):
                for end in (offset, min(offset + 15, blk.nr - 1)):
                    args = [b.bitcast(b.gep(at, [i64(end)]), I8P), i32(1), i32(3), i32(1)]
                    b.call(fn, args)

    def micro(self, ap: ir.Value, bp: ir.Value, kc: ir.Value, row: ir.Value, col: ir.Value,
              mr_eff: ir.Value, nr_eff: ir.Value, first: ir.Value | bool, last: ir.Value | bool,
              next_tile: tuple[ir.Value, ir.Value]) -> None:
        """out[row .. row + mr_eff, col .. col + nr_eff] (+)= A panel . B panel over one K block.

        Every output element is one chain of fused multiply-adds over k in order, continued from the stored
        partial sum across K blocks: its value does not depend on the tiling, the blocking or the vector width.
        An edge tile runs the same vector code on zero-padded panels and loads and stores with lane masks.
        """
        b, blk = self.b, self.blk
        self.prefetch_tile(*next_tile)
        full = b.and_(b.icmp_signed("==", mr_eff, i64(blk.mr)), b.icmp_signed("==", nr_eff, i64(blk.nr)))
        masks = self.masks(mr_eff, nr_eff)
        c_ptrs = self.c_rows(self.kb.out, row, col)

        def set_accs(values: list[ir.Value]) -> None:
            for slot, v in zip(self.acc_slots, values, strict=True):
                b.store(v, slot)

        def resume() -> None:
            with b.if_else(full) as (whole, edge):
                with whole:
                    set_accs(self.read(c_ptrs, None))
                with edge:
                    set_accs(self.read(c_ptrs, masks))

        zero = ir.Constant(self.vt, None)
        if first is True:
            set_accs([zero] * len(self.acc_slots))
        else:
            assert not isinstance(first, bool)
            with b.if_else(first) as (start, cont):
                with start:
                    set_accs([zero] * len(self.acc_slots))
                with cont:
                    resume()
        accs = [b.load(slot) for slot in self.acc_slots]
        unrolled = b.udiv(kc, i64(UNROLL))

        def unrolled_step(u: ir.Value, carried: list[ir.Value]) -> list[ir.Value]:
            k0 = b.mul(u, i64(UNROLL))
            for d in range(UNROLL):
                carried = self.k_step(ap, bp, b.add(k0, i64(d)), carried)
            return carried

        accs = loop(b, i64(0), unrolled, accs, unrolled_step, name="ku")
        accs = loop(b, b.mul(unrolled, i64(UNROLL)), kc, accs, lambda k, c: self.k_step(ap, bp, k, c), name="k")

        def store(epilogue: bool) -> None:
            with b.if_else(full) as (whole, edge):
                with whole:
                    self.finish_tile(accs, row, col, None, epilogue)
                with edge:
                    self.finish_tile(accs, row, col, masks, epilogue)

        if last is True:
            store(True)
        else:
            assert not isinstance(last, bool)
            with b.if_else(last) as (done, partial):
                with done:
                    store(True)
                with partial:
                    store(False)
        if self.mm.epilogue == "gelu":
            if last is True:
                self.gelu_pass(row, col, mr_eff, nr_eff)
            else:
                assert not isinstance(last, bool)
                with b.if_then(last):
                    self.gelu_pass(row, col, mr_eff, nr_eff)

    # ------------------------------------------------------------------------------------------- loops

    def product(self, ap: ir.Value, bp: ir.Value, b_mat: ir.Value, r0: ir.Value, r1: ir.Value,
                c0: ir.Value, c1: ir.Value) -> None:
        """out[r0:r1, c0:c1] for rows that share one right operand `b_mat`."""
        b, blk, k_dim = self.b, self.blk, self.mm.k
        with for_range(b, i64(0), ceil_div(b, b.sub(c1, c0), blk.nc), "jc") as jb:
            jc = b.add(c0, b.mul(jb, i64(blk.nc)))
            ncur = smin(b, i64(blk.nc), b.sub(c1, jc))
            with for_range(b, i64(0), i64(self.k_blocks), "pc") as kblock:
                pc = b.mul(kblock, i64(blk.kc))
                kc = smin(b, i64(blk.kc), b.sub(i64(k_dim), pc))
                one_block = self.k_blocks == 1
                first = True if one_block else b.icmp_signed("==", kblock, i64(0))
                last = True if one_block else b.icmp_signed("==", kblock, i64(self.k_blocks - 1))
                with for_range(b, i64(0), ceil_div(b, b.sub(r1, r0), blk.mc), "ic") as ib:
                    ic = b.add(r0, b.mul(ib, i64(blk.mc)))
                    mcur = smin(b, i64(blk.mc), b.sub(r1, ic))
                    with for_range(b, i64(0), ceil_div(b, ncur, blk.nr), "jr") as jp:
                        jr = b.mul(jp, i64(blk.nr))
                        nr_eff = smin(b, i64(blk.nr), b.sub(ncur, jr))
                        b_panel = b.gep(bp, [b.mul(jp, b.mul(kc, i64(blk.nr)))], inbounds=True)
                        # Each panel is packed just before its first use, so it is still in L1 for it;
                        # later row blocks (and column panels) find it in the buffer.
                        with b.if_then(b.icmp_signed("==", ib, i64(0))):
                            self.pack_panel(b_panel, b_mat, b.add(jc, jr), nr_eff, blk.nr, pc, kc)
                        row_panels = ceil_div(b, mcur, blk.mr)
                        with for_range(b, i64(0), row_panels, "ir") as ip:
                            ir_ = b.mul(ip, i64(blk.mr))
                            mr_eff = smin(b, i64(blk.mr), b.sub(mcur, ir_))
                            a_panel = b.gep(ap, [b.mul(ip, b.mul(kc, i64(blk.mr)))], inbounds=True)
                            with b.if_then(b.icmp_signed("==", jp, i64(0))):
                                self.pack_panel(a_panel, self.a_ptr, b.add(ic, ir_), mr_eff, blk.mr, pc, kc)
                            row, col = b.add(ic, ir_), b.add(jc, jr)
                            # The next micro-tile down the column panel, or the top of the next panel.
                            down = b.icmp_signed("<", b.add(ip, i64(1)), row_panels)
                            next_tile = (b.select(down, b.add(row, i64(blk.mr)), ic),
                                         b.select(down, col, b.add(col, i64(blk.nr))))
                            self.micro(a_panel, b_panel, kc, row, col, mr_eff, nr_eff, first, last, next_tile)

    def tile(self, ap: ir.Value, bp: ir.Value, r0: ir.Value, r1: ir.Value, c0: ir.Value, c1: ir.Value) -> None:
        b, mm = self.b, self.mm
        with b.if_then(b.and_(b.icmp_signed("<", r0, r1), b.icmp_signed("<", c0, c1))):
            if not (mm.gb == mm.g and mm.g > 1):
                self.product(ap, bp, self.b_ptr, r0, r1, c0, c1)
                return
            # A batched right operand: the tile's rows are cut where their batch (and so their b) changes.
            with for_range(b, b.udiv(r0, i64(mm.m)), ceil_div(b, r1, mm.m), "batch") as g:
                rs = smax(b, r0, b.mul(g, i64(mm.m)))
                re = smin(b, r1, b.mul(b.add(g, i64(1)), i64(mm.m)))
                b_mat = b.gep(self.b_ptr, [b.mul(g, i64(mm.n * mm.k))], inbounds=True)
                self.product(ap, bp, b_mat, rs, re, c0, c1)

    def emit(self) -> KernelIR:
        """The kernel: packing buffers from malloc, then the tiles, adjacent ones of the same rows as one."""
        b, kb = self.b, self.kb
        floats = self.a_pack_floats + self.b_pack_floats
        malloc = kb.declare("malloc", I8P, [I64])
        free = kb.declare("free", ir.VoidType(), [I8P])
        raw = b.call(malloc, [i64(4 * floats + 64)])
        with b.if_then(b.icmp_unsigned("==", raw, ir.Constant(I8P, None)), likely=False):
            self.poison_tiles()
            b.ret_void()
        aligned = b.and_(b.add(b.ptrtoint(raw, I64), i64(63)), i64(-64))
        ap = b.inttoptr(aligned, F32.as_pointer())
        bp = b.gep(ap, [i64(self.a_pack_floats)], inbounds=True)
        b.store(i64(0), self.tile_slot)
        with while_loop(b, lambda: b.icmp_signed("<", b.load(self.tile_slot), kb.ntiles), "tile"):
            t = b.load(self.tile_slot)
            r0, r1, c0, c1 = self.tile_fields(t)
            b.store(c1, self.c_end_slot)
            b.store(b.add(t, i64(1)), self.tile_slot)

            def adjacent() -> ir.Value:
                """The next tile covers the same rows and starts where this run of tiles ends."""
                nxt = b.load(self.tile_slot)
                inside = b.icmp_signed("<", nxt, kb.ntiles)
                n_r0, n_r1, n_c0, _ = self.tile_fields(b.select(inside, nxt, t))
                same = b.and_(b.icmp_signed("==", n_r0, r0), b.icmp_signed("==", n_r1, r1))
                return b.and_(inside, b.and_(same, b.icmp_signed("==", n_c0, b.load(self.c_end_slot))))

            # The union of adjacent tiles is computed as one: each element is the same chain of FMAs either
            # way, and one wide tile packs its operands once instead of once per narrow tile.
            with while_loop(b, adjacent, "merge"):
                nxt = b.load(self.tile_slot)
                b.store(self.tile_fields(nxt)[3], self.c_end_slot)
                b.store(b.add(nxt, i64(1)), self.tile_slot)
            self.tile(ap, bp, r0, r1, c0, b.load(self.c_end_slot))
        b.call(free, [raw])
        return kb.finish()

    def tile_fields(self, t: ir.Value) -> list[ir.Value]:
        b = self.b
        base = b.mul(t, i64(4))
        return [b.load(b.gep(self.kb.tiles, [b.add(base, i64(k))], inbounds=True), name=name)
                for k, name in enumerate(("r0", "r1", "c0", "c1"))]

    def poison_tiles(self) -> None:
        """Without packing buffers the kernel computes nothing, and fills its tiles with NaN so the failure
        cannot pass for a result."""
        b, n_dim = self.b, self.mm.n
        with for_range(b, i64(0), self.kb.ntiles, "nan_tile") as t:
            r0, r1, c0, c1 = self.tile_fields(t)
            with for_range(b, r0, r1, "nan_r") as r:
                with for_range(b, c0, c1, "nan_c") as c:
                    store_at(b, f32(float("nan")), self.kb.out, b.add(b.mul(r, i64(n_dim)), c))


def lower_matmul(spec: KernelSpec, blk: Blocking | None = None) -> KernelIR:
    """The kernel of `spec`, blocked for spec.host unless `blk` says otherwise."""
    mm = _check(spec)
    if blk is None:
        blk = blocking(spec.host, mm.g * mm.m, mm.n, mm.k)
    return _Gemm(spec, mm, blk).emit()


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
